"""Indexes for the back office's searches and filters.

Admin searches use prefix (`^col`, UPPER(col) LIKE 'X%') and exact (`=col`, UPPER(col) = 'X')
lookups; on PostgreSQL only an UPPER(col) text_pattern_ops index serves both. SQLite has no
expression operator classes; its tables stay small enough on one machine to scan.
(accounts 0005 made the organization ones.) Words anywhere in an incident's detail are found
through a trigram index (pg_trgm, a trusted extension any database owner may create).
"""

from django.conf import settings
from django.db import migrations, models

SEARCHED = {
    "accounts_user": ("email", "full_name"),
    "accounts_invitation": ("email",),
    "billing_financeflag": ("stripe_object_id",),
    "billing_invoice": ("number",),
    "billing_modelprice": ("model",),
    "billing_usagehour": ("model",),
    "billing_webhookevent": ("object_id",),
    "capacity_cluster": ("code",),
    "capacity_region": ("code", "name"),
    "portal_auditevent": ("actor_email", "object_id", "request_id", "action"),
}

# Searched anywhere in the text (icontains).
SEARCHED_WORDS = {"capacity_incident": ("detail",)}


def index_name(table: str, column: str) -> str:
    return f"{table}_{column}_search"[:63]


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, columns in SEARCHED.items():
        for column in columns:
            schema_editor.execute(
                f"CREATE INDEX IF NOT EXISTS {index_name(table, column)} "
                f"ON {table} (UPPER({column}::text) text_pattern_ops);"
            )
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm;")
    for table, columns in SEARCHED_WORDS.items():
        for column in columns:
            schema_editor.execute(
                f"CREATE INDEX IF NOT EXISTS {index_name(table, column)} "
                f"ON {table} USING gin (UPPER({column}::text) gin_trgm_ops);"
            )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, columns in (*SEARCHED.items(), *SEARCHED_WORDS.items()):
        for column in columns:
            schema_editor.execute(f"DROP INDEX IF EXISTS {index_name(table, column)};")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_filter_indexes"),
        ("billing", "0006_filter_indexes"),
        ("capacity", "0007_filter_indexes"),
        ("portal", "0003_staff_groups"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(
                fields=["actor_kind", "-created_at"], name="portal_audi_actor_k_318f28_idx"
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
