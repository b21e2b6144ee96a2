from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Register this app's tasks in every process (not only workers), so tasks sent by name
        # resolve, and run inline where tests ask for that.
        from . import tasks  # noqa: F401
