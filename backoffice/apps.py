from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class BackofficeConfig(AppConfig):
    default = True
    name = "backoffice"
    verbose_name = "Back office"


class BackOfficeAdminConfig(admin_apps.AdminConfig):
    """Django's admin, served by our site: staff need a second factor, the index is a dashboard."""

    default = False
    default_site = "backoffice.site.BackOfficeSite"
