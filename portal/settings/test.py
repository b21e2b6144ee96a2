"""Tests: fast hashing, in-memory e-mail, an isolated database and broker per run."""

import os
import tempfile
from pathlib import Path

from .base import *  # noqa: F403
from .base import env

DEBUG = False
SECRET_KEY = "test-only-key-not-secret"  # noqa: S105
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

# Argon2 is the production hasher; tests only need hashing to be correct, not slow.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if not env.str("EMAIL_URL", default=""):  # a worker started by a test may be given a file backend
    EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
# Generous, so no test is throttled by accident; tests of the limits set their own.
EMAIL_RATE_LIMITS = dict.fromkeys(EMAIL_RATE_LIMITS, 10_000)  # noqa: F405

# Each test run gets its own broker folder so parallel runs never share messages.
CELERY_BROKER_DIR = Path(os.environ.get("TEST_BROKER_DIR") or tempfile.mkdtemp(prefix="hb-broker-"))
if CELERY_BROKER_URL.startswith("filesystem://"):  # noqa: F405
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "store_processed": False,
    }
# Unit tests run tasks inline; flow tests start a real worker (tests/conftest.py).
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
DEMO_DATA_ALLOWED = True
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
# Serve static files straight from the apps, without collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# A file, not shared-cache memory, for the SQLite test database: the live server's threads
# and the test then share one database with real WAL locking and busy timeouts.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": str(Path(tempfile.mkdtemp(prefix="hb-db-")) / "test.sqlite3")
    }

# The simulated data center answers at once and never fails, unless a test says otherwise.
PROVISIONING_SIMULATED_LATENCY = env.float("PROVISIONING_SIMULATED_LATENCY", default=0.0)
PROVISIONING_SIMULATED_FAILURE_RATE = 0.0

# Capacity limits out of the way (capacity/limits.py): tests of the limits set their own, and
# the race tests must never be stopped by a limit before they reach the lock they test.
CAPACITY_LIMITS = {
    "self_serve": {"open_holds": None, "held_node_hours": None, "live_nodes": None},
    "enterprise": {"open_holds": None, "held_node_hours": None, "live_nodes": None},
}
CAPACITY_HOLD_RATE_PER_MINUTE = None
