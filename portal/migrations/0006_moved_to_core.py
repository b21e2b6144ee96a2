"""The audit log and idempotency records now belong to core (its 0001): the tables stay."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('portal', '0005_audit_append_only'),
        ('core', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
            migrations.RemoveField(
                model_name='auditevent',
                name='actor',
            ),
            migrations.RemoveField(
                model_name='auditevent',
                name='organization',
            ),
            migrations.DeleteModel(
                name='IdempotencyRecord',
            ),
            migrations.DeleteModel(
                name='AuditEvent',
            ),
            ],
        ),
    ]
