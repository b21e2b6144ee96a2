"""The audit log and idempotency records move from portal to core, keeping their tables (and the
audit log's append-only trigger): only Django's state changes, plus the content types, so
permissions and the staff groups holding them follow."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def move_content_types(apps, schema_editor):
    content_type = apps.get_model("contenttypes", "ContentType")
    permission = apps.get_model("auth", "Permission")
    for model in ("auditevent", "idempotencyrecord"):
        old = content_type.objects.filter(app_label="portal", model=model).first()
        if old is None:
            continue
        new = content_type.objects.filter(app_label="core", model=model).first()
        if new is None:
            old.app_label = "core"
            old.save(update_fields=["app_label"])
            continue
        # Both exist (core's made by a run in between): keep core's, carry the grants over.
        for perm in permission.objects.filter(content_type=old):
            twin = permission.objects.filter(content_type=new, codename=perm.codename).first()
            if twin is None:
                perm.content_type = new
                perm.save(update_fields=["content_type"])
            else:
                for group in perm.group_set.all():
                    group.permissions.add(twin)
                for user in perm.user_set.all():
                    user.user_permissions.add(twin)
        old.delete()


def restore_content_types(apps, schema_editor):
    content_type = apps.get_model("contenttypes", "ContentType")
    content_type.objects.filter(
        app_label="core", model__in=["auditevent", "idempotencyrecord"]
    ).update(app_label="portal")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('portal', '0005_audit_append_only'),
        ('accounts', '0007_payment_terms_label'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]



    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
            migrations.CreateModel(
                name='IdempotencyRecord',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('owner', models.CharField(help_text='The API key or user that sent it.', max_length=80)),
                    ('key', models.CharField(max_length=255)),
                    ('request_hash', models.CharField(max_length=64)),
                    ('status_code', models.PositiveSmallIntegerField(blank=True, null=True)),
                    ('body', models.JSONField(blank=True, null=True)),
                    ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ],
                options={
                    'db_table': 'portal_idempotencyrecord',
                    'indexes': [models.Index(fields=['created_at'], name='portal_idem_created_0bb985_idx')],
                    'constraints': [models.UniqueConstraint(fields=('owner', 'key'), name='portal_idempotency_once')],
                },
            ),
            migrations.CreateModel(
                name='AuditEvent',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                    ('actor_kind', models.CharField(choices=[('customer', 'Customer'), ('staff', 'Staff'), ('system', 'System')], max_length=16)),
                    ('actor_email', models.EmailField(blank=True, max_length=254)),
                    ('action', models.CharField(max_length=64)),
                    ('object_type', models.CharField(blank=True, max_length=64)),
                    ('object_id', models.CharField(blank=True, max_length=64)),
                    ('object_repr', models.CharField(blank=True, max_length=200)),
                    ('data', models.JSONField(blank=True, default=dict)),
                    ('reason', models.TextField(blank=True)),
                    ('ip_address', models.GenericIPAddressField(blank=True, null=True)),
                    ('request_id', models.CharField(blank=True, max_length=64)),
                    ('actor', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ('organization', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='audit_events', to='accounts.organization')),
                ],
                options={
                    'db_table': 'portal_auditevent',
                    'ordering': ['-created_at', '-id'],
                    'indexes': [models.Index(fields=['organization', '-created_at'], name='portal_audi_organiz_f78638_idx'), models.Index(fields=['object_type', 'object_id'], name='portal_audi_object__349d36_idx'), models.Index(fields=['actor', '-created_at'], name='portal_audi_actor_i_137ff1_idx'), models.Index(fields=['action'], name='portal_audi_action_4c43e9_idx'), models.Index(fields=['actor_kind', '-created_at'], name='portal_audi_actor_k_318f28_idx')],
                },
            ),
            ],
        ),
        migrations.RunPython(move_content_types, restore_content_types),
    ]
