from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class PortalConfig(AppConfig):
    default = True
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from .middleware import SessionTimeoutMiddleware

        # Django's hook for "a session now belongs to a user": the session's clocks start with
        # it, in the same write as the login itself.
        user_logged_in.connect(SessionTimeoutMiddleware.start, dispatch_uid="session-clocks")


class BackOfficeConfig(admin_apps.AdminConfig):
    """Django's admin, served by our site: staff need a second factor, the index is a dashboard."""

    default = False
    default_site = "portal.backoffice.site.BackOfficeSite"
