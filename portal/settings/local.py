"""Development: DEBUG on, console e-mail, an insecure key that only works on loopback."""

from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="dev-only-insecure-key-do-not-use-in-production")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# The staff second factor is asked for unless STAFF_OTP_REQUIRED=false; seed_demo prints each
# demo staff member's TOTP secret so an authenticator app can be set up in a minute.
STAFF_OTP_REQUIRED = env.bool("STAFF_OTP_REQUIRED", default=True)
# seed_demo refuses to run unless this is set; production never sets it.
DEMO_DATA_ALLOWED = True
# Serve static files straight from the apps, without collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
# runserver (`make run`) serves each connection in a thread of its own and, unlike gunicorn's
# workers, never closes a thread's database connection that CONN_MAX_AGE keeps: 32 concurrent
# clients ran PostgreSQL out of connections. Here every request closes its own; production keeps
# them (with health checks, portal/settings/base.py).
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
