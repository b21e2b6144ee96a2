"""On PostgreSQL, make two overlapping negotiated rates of one organization, GPU model and
region impossible. An every-region rate (region NULL, compared as 0) may overlap a region's
own rate: pricing prefers the region's. SQLite has no exclusion constraints; there the rate
service performs the same check with the organization's row locked."""

from django.db import migrations

CREATE = """
CREATE EXTENSION IF NOT EXISTS btree_gist;
ALTER TABLE capacity_negotiatedrate
    ADD CONSTRAINT capacity_negotiatedrate_no_overlap
    EXCLUDE USING gist (
        organization_id WITH =,
        gpu_model_id WITH =,
        (COALESCE(region_id, 0)) WITH =,
        tstzrange(valid_from, valid_until, '[)') WITH &&
    );
"""
DROP = (
    "ALTER TABLE capacity_negotiatedrate "
    "DROP CONSTRAINT IF EXISTS capacity_negotiatedrate_no_overlap;"
)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("capacity", "0005_back_office")]
    operations = [migrations.RunPython(forwards, backwards)]
