"""Indexes for the back office's organization list: the payment-terms filter everywhere and, on
PostgreSQL, the prefix search (`^name` and friends become UPPER(col) LIKE 'X%', which only an
UPPER(...) text_pattern_ops index can serve). SQLite lists a few thousand rows by scanning."""

from django.db import migrations, models

COLUMNS = ("name", "slug", "legal_name", "billing_email")


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in COLUMNS:
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS accounts_org_{column}_prefix "
            f"ON accounts_organization (UPPER({column}::text) text_pattern_ops);"
        )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in COLUMNS:
        schema_editor.execute(f"DROP INDEX IF EXISTS accounts_org_{column}_prefix;")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0004_back_office")]

    operations = [
        migrations.AddIndex(
            model_name="organization",
            index=models.Index(fields=["payment_terms"], name="accounts_or_payment_cda90c_idx"),
        ),
        migrations.RunPython(forwards, backwards),
    ]
