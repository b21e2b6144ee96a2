"""On PostgreSQL, make overlapping live allocations of one node impossible.

SQLite has no exclusion constraints; there, immediate transactions serialize every writer and
the allocating service performs the same check under that lock.
"""

from django.db import migrations

CREATE = """
CREATE EXTENSION IF NOT EXISTS btree_gist;
ALTER TABLE capacity_allocation
    ADD CONSTRAINT capacity_allocation_no_overlap
    EXCLUDE USING gist (node_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)
    WHERE (released_at IS NULL);
"""
DROP = "ALTER TABLE capacity_allocation DROP CONSTRAINT IF EXISTS capacity_allocation_no_overlap;"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("capacity", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
