from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from .middleware import SessionTimeoutMiddleware

        # Django's hook for "a session now belongs to a user": the session's clocks start with
        # it, in the same write as the login itself.
        user_logged_in.connect(SessionTimeoutMiddleware.start, dispatch_uid="session-clocks")
