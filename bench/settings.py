"""Settings for the benchmarks: the test settings, plus djangorestframework-api-key so our key
authentication can be measured beside its HasAPIKey on the same data."""

from portal.settings.test import *  # noqa: F403
from portal.settings.test import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "rest_framework_api_key"]

# The benchmarks reserve far more, far faster, than any one customer may: no capacity limits
# or hold rate (the test settings already lift them; stated here so the load is never throttled).
CAPACITY_LIMITS = {
    "self_serve": {"open_holds": None, "held_node_hours": None, "live_nodes": None},
    "enterprise": {"open_holds": None, "held_node_hours": None, "live_nodes": None},
}
CAPACITY_HOLD_RATE_PER_MINUTE = None
