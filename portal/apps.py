from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class PortalConfig(AppConfig):
    default = True
    name = "portal"
    verbose_name = "Portal"


class BackOfficeConfig(admin_apps.AdminConfig):
    """Django's admin, served by our site: staff need a second factor, the index is a dashboard."""

    default = False
    default_site = "portal.backoffice.site.BackOfficeSite"
