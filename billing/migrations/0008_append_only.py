from django.db import migrations

from core.append_only import guard


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_refund_settles")]

    operations = [guard("billing_ledgerentry"), guard("billing_webhookevent")]
