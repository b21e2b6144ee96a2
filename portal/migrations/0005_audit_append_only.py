from django.db import migrations

from core.append_only import guard


class Migration(migrations.Migration):
    dependencies = [("portal", "0004_search_and_filter_indexes")]

    operations = [guard("portal_auditevent")]
