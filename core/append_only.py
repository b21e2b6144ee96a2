"""Database triggers that refuse to change recorded history (audit events, ledger rows, Stripe
events): the model refuses `save()` of an existing row and `delete()`, but a queryset's
`update()` or `delete()`, raw SQL or a shell would get past that. The database refuses them too.

On SQLite only changes are refused, not deletions: Django empties tables with DELETE between
transactional tests there (PostgreSQL uses TRUNCATE, which row triggers do not see)."""

from collections.abc import Callable

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

Migration = Callable[[StateApps, BaseDatabaseSchemaEditor], None]

MESSAGE = "rows of {table} are append-only"


def _forward(table: str) -> Migration:
    def apply(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
        vendor = schema_editor.connection.vendor
        message = MESSAGE.format(table=table)
        if vendor == "postgresql":
            schema_editor.execute(
                f"CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger AS $$ "
                f"BEGIN RAISE EXCEPTION '{message}'; END $$ LANGUAGE plpgsql"
            )
            schema_editor.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
            )
        elif vendor == "sqlite":
            schema_editor.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )

    return apply


def _backward(table: str) -> Migration:
    def apply(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
        vendor = schema_editor.connection.vendor
        if vendor in ("postgresql", "sqlite"):
            schema_editor.execute(
                f"DROP TRIGGER IF EXISTS {table}_append_only"
                + (f" ON {table}" if vendor == "postgresql" else "")
            )
        if vendor == "postgresql":
            schema_editor.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")

    return apply


def guard(table: str) -> migrations.RunPython:
    """A migration operation that puts the append-only trigger on `table`."""
    return migrations.RunPython(_forward(table), _backward(table))
