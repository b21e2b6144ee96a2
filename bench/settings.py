"""Settings for the benchmarks: the test settings, plus djangorestframework-api-key so our key
authentication can be measured beside its HasAPIKey on the same data."""

from portal.settings.test import *  # noqa: F403
from portal.settings.test import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "rest_framework_api_key"]
