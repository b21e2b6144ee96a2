from django.apps import AppConfig


class CapacityConfig(AppConfig):
    name = "capacity"
    verbose_name = "Capacity"

    def ready(self) -> None:
        # Register this app's tasks in every process (not only workers), so tasks sent by
        # name from another app resolve, and run inline where tests ask for that.
        from . import tasks  # noqa: F401
