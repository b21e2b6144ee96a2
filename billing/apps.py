from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Register this app's tasks in every process (not only workers), so tasks sent by
        # name from another app resolve, and run inline where tests ask for that.
        from accounts import credit

        from . import selectors, tasks  # noqa: F401

        credit.register(selectors.credit_used)
