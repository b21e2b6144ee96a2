"""Settings shared by every environment; values come from the environment (see .env.example)."""

import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import environ
from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
# A variable set but empty (KEY= as copied from .env.example) counts as not set, so its default
# applies instead of an empty database URL, e-mail URL or number.
env.ENVIRON = {name: value for name, value in os.environ.items() if value != ""}


def required(name: str) -> str:
    """Return an environment variable, failing fast with a clear message when it is missing."""
    value = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(f"Set the {name} environment variable.")
    return value


DEBUG = False
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])

INSTALLED_APPS = [
    # The back office: Django's admin with the staff second factor and the dashboard.
    "backoffice.apps.BackOfficeAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "csp",
    "django_prometheus",
    "django_countries",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # The layers, bottom to top: each imports only from the ones before it (docs/layers.md).
    "core",
    "accounts",
    "capacity",
    "billing",
    "backoffice",
    "portal",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "core.security.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "core.middleware.RequestContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "core.middleware.SessionTimeoutMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.navigation",
                "csp.context_processors.nonce",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# SQLite by default: WAL lets readers run beside the writer, and IMMEDIATE transactions take the
# write lock up front so concurrent writers queue (for up to `timeout` seconds) instead of failing
# with "database is locked" halfway through a transaction.
SQLITE_OPTIONS = {
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
    "init_command": (
        "PRAGMA journal_mode=WAL;"
        "PRAGMA synchronous=NORMAL;"
        "PRAGMA foreign_keys=ON;"
        "PRAGMA busy_timeout=20000;"
    ),
}


def database_from_env(default_path: Path) -> dict:
    config = env.db_url("DATABASE_URL", default=f"sqlite:///{default_path}")
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config["OPTIONS"] = {**SQLITE_OPTIONS, **config.get("OPTIONS", {})}
    else:
        config.setdefault("CONN_MAX_AGE", 60)
        config["CONN_HEALTH_CHECKS"] = True
    return config


DATABASES = {"default": database_from_env(VAR_DIR / "db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Accounts and authentication ------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
# The tenant: the ground (core) names it only through this setting, as it does the user.
TENANT_MODEL = "accounts.Organization"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
PASSWORD_RESET_TIMEOUT = 60 * 60 * 3

# Sign-in throttle (django-axes): 10 failures per account lock it for 15 minutes.
AXES_FAILURE_LIMIT = 10
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = ["username"]
AXES_USERNAME_CALLABLE = "accounts.auth.axes_username"
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.views.locked_out"
AXES_VERBOSE = False

# Every silenced system check, with the reason, in one place.
SILENCED_SYSTEM_CHECKS = [
    # axes.W006 wants the client address in the lockout key. Ours is the account itself, which
    # rotating user agents, cookies or addresses cannot get around; adding the address would also
    # lock out whole offices behind one NAT after ten typos.
    "axes.W006",
]

EMAIL_VERIFICATION_MAX_AGE = timedelta(days=3)
INVITATION_TTL = timedelta(days=7)
API_KEY_CACHE_SECONDS = 5  # a revoked key stops working within this
API_RATE_LIMIT = env.int("API_RATE_LIMIT", default=600)  # requests per key per window
API_RATE_WINDOW = 60  # seconds
# Sensitive actions (API keys, payment methods, roles) ask for the password again after this.
REAUTHENTICATION_MAX_AGE = timedelta(minutes=10)
# What was typed into a form that stopped for that password is kept this long to fill it in again.
FORM_STASH_MAX_AGE = timedelta(minutes=5)
# E-mail anyone can make the portal send, limited so nobody turns it on an inbox: how many in
# each EMAIL_RATE_WINDOW, counted in the shared cache (core.ratelimit). Past a limit the request
# is refused with a message that says when to try again; nothing is sent.
EMAIL_RATE_WINDOW = timedelta(hours=1)
EMAIL_RATE_LIMITS = {
    "invitation_sender": 20,  # per inviting user
    "invitation_recipient": 3,  # per invited address, whichever organization invites
    "invitation_organization": 50,
    "signup_client": 10,  # sign-ups (each sends a verification link) per client address
    "signup_existing_recipient": 3,  # sign-ups tried with a taken address (past it: no mail)
    "password_reset_recipient": 3,  # per address typed, whether or not it has an account
    "password_reset_client": 20,  # per client address
    "verification_recipient": 5,  # verification links re-sent to one address
}

# --- Back office ----------------------------------------------------------------------------
# Staff sign in to /admin/ with a password and a TOTP code; only the local settings relax it.
STAFF_OTP_REQUIRED = True
OTP_TOTP_ISSUER = "Hyperblock back office"
OTP_TOTP_TOLERANCE = 1  # one 30-second step either side, for clocks a little off

# --- E-mail ---------------------------------------------------------------------------------
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Hyperblock <no-reply@hyperblock.local>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Internationalisation -------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# One format for dates and times people read, the admin's too: portal/formats/<language>/ and
# core.dates (the `when` and `day` template filters). The same as the fallback here.
FORMAT_MODULE_PATH = ["portal.formats"]
DATE_FORMAT = "D j M Y"
DATETIME_FORMAT = "D j M Y, H:i e"
SHORT_DATE_FORMAT = DATE_FORMAT
SHORT_DATETIME_FORMAT = DATETIME_FORMAT

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default=str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Cache ----------------------------------------------------------------------------------
# The database cache is shared by every process on one machine; CACHE_URL=redis://... moves it
# to Redis when the app scales out.
CACHES = {
    "default": env.cache_url(
        "CACHE_URL",
        default="dbcache://django_cache",
    )
}

# --- Sessions and security ------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# Signed out after an hour without a request, and 12 hours after signing in in any case
# (core.middleware.SessionTimeoutMiddleware); the cookie lives no longer than the latter.
SESSION_IDLE_TIMEOUT = timedelta(hours=1)
SESSION_ABSOLUTE_TIMEOUT = timedelta(hours=12)
SESSION_COOKIE_AGE = int(SESSION_ABSOLUTE_TIMEOUT.total_seconds())
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Only what the pages use: our own scripts and styles (no inline script anywhere; the few
# <style> blocks carry the request's nonce; style attributes are allowed, which cannot run
# code), images of our own or data: URIs (favicon, charts), and Stripe.js, whose origins
# core.security adds from the Stripe settings in force.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, NONCE],
        "style-src-elem": [SELF, NONCE],
        "style-src-attr": [UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "frame-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# --- Celery ---------------------------------------------------------------------------------
# Default broker: kombu's filesystem transport under var/ (no server needed).
CELERY_BROKER_DIR = Path(env.str("CELERY_BROKER_DIR", default=str(VAR_DIR / "broker")))
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://localhost/")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's on-disk transport with atomic writes and takes (see core/broker.py).
    CELERY_BROKER_TRANSPORT = "core.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "store_processed": False,
        # Look for new messages five times a second (the default, once a second, makes a
        # worker with one free slot take one task per second).
        "polling_interval": 0.2,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 60 * 60}
CELERY_BROKER_CONNECTION_TIMEOUT = 5
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 5 * 60
CELERY_TASK_TIME_LIMIT = 6 * 60
CELERY_TIMEZONE = "UTC"
# Workers log through LOGGING below like the web (request ids, masked secrets, JSON if asked).
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# Queues are named here and nowhere else; a worker with no -Q consumes all of them.
QUEUE_DEFAULT = "default"
QUEUE_PROVISIONING = "provisioning"
QUEUE_BILLING = "billing"
QUEUE_EMAIL = "email"
CELERY_TASK_DEFAULT_QUEUE = QUEUE_DEFAULT
# A worker started for a queue not named here (a typo) fails at start instead of waiting on a
# queue nobody sends to.
CELERY_TASK_CREATE_MISSING_QUEUES = False
# Each queue has its own exchange and routing key: with a shared key, a direct exchange would
# copy every message into every queue.
CELERY_TASK_QUEUES = [
    Queue(name, Exchange(name, type="direct"), routing_key=name)
    for name in (QUEUE_DEFAULT, QUEUE_PROVISIONING, QUEUE_BILLING, QUEUE_EMAIL)
]
CELERY_TASK_DEFAULT_EXCHANGE = QUEUE_DEFAULT
CELERY_TASK_DEFAULT_ROUTING_KEY = QUEUE_DEFAULT
CELERY_TASK_ROUTES = {
    "core.send_email": {"queue": QUEUE_EMAIL},
    "accounts.send_email": {"queue": QUEUE_EMAIL},  # its former name, for messages still queued
    "capacity.*": {"queue": QUEUE_PROVISIONING},
    "billing.*": {"queue": QUEUE_BILLING},
}
# Invoices on invoice terms: a creation at Stripe that fails is tried again by the settlement
# sweep (every 5 minutes) this many times, then finance is told. Reminders go out this many days
# past the due date (each once); this long past it, new reservations are refused until it is paid.
INVOICE_CREATE_MAX_ATTEMPTS = 6
INVOICE_REMINDER_DAYS = (1, 7)
INVOICE_REFUSE_AFTER_DAYS = 14
# check_books leaves money that moved this recently for its next run (not booked yet, maybe).
BOOKS_CHECK_GRACE_SECONDS = 15 * 60
# Periodic work lives in code; every entry is safe to run twice.
CELERY_BEAT_SCHEDULE = {
    "capacity.expire_holds": {"task": "capacity.expire_holds", "schedule": 60.0},
    "capacity.start_due": {"task": "capacity.start_due", "schedule": 60.0},
    "capacity.end_due": {"task": "capacity.end_due", "schedule": 60.0},
    "capacity.remind": {"task": "capacity.remind", "schedule": 300.0},
    "capacity.reconcile": {"task": "capacity.reconcile", "schedule": 300.0},
    "billing.settle_pending": {"task": "billing.settle_pending", "schedule": 300.0},
    "billing.sweep_sla_credits": {"task": "billing.sweep_sla_credits", "schedule": 900.0},
    "billing.aggregate_usage": {"task": "billing.aggregate_usage", "schedule": crontab(minute=5)},
    "billing.retry_webhooks": {"task": "billing.retry_webhooks", "schedule": 120.0},
    "billing.reconcile": {"task": "billing.reconcile", "schedule": crontab(hour=3, minute=17)},
    "billing.check_books": {"task": "billing.check_books", "schedule": crontab(hour=3, minute=47)},
    "billing.remind_overdue_invoices": {
        "task": "billing.remind_overdue_invoices",
        "schedule": crontab(hour=9, minute=7),
    },
    "accounts.clean_login_attempts": {
        "task": "accounts.clean_login_attempts",
        "schedule": crontab(minute="*/15"),
    },
}

# --- API ----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api_auth.ApiKeyAuthentication",
        "accounts.api_auth.PortalSession",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "core.scopes.HasScope",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "core.api.Cursor",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DATETIME_FORMAT": "%Y-%m-%dT%H:%M:%SZ",
    "COERCE_DECIMAL_TO_STRING": True,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Hyperblock API",
    "DESCRIPTION": "Reserve GPU capacity, pay for it and report token usage. "
    "Authenticate with `Authorization: Bearer <API key>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Reservations and extensions both have a `state`: each its own named enum.
    "ENUM_NAME_OVERRIDES": {
        "ReservationStateEnum": "capacity.models.Reservation.State",
        "ExtensionStateEnum": "capacity.models.Extension.State",
        "SlaCreditCauseEnum": "capacity.api.SLA_CREDIT_CAUSES",
        "ErrorTypeEnum": "core.openapi.ERROR_TYPES",
    },
    # Links between operations are declared beside each view and moved into its answers.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.openapi.move_links",
    ],
}

# --- Capacity -------------------------------------------------------------------------------
CAPACITY_MIN_HOURS = 1
CAPACITY_MAX_HOURS = 182 * 24
CAPACITY_MAX_LEAD = timedelta(weeks=8)  # how far ahead a block may start
CAPACITY_MAX_NODES = 64  # per reservation
CAPACITY_HOLD = timedelta(minutes=15)  # capacity held while the customer pays
CAPACITY_LOCK_TIMEOUT_MS = 5000  # PostgreSQL: wait at most this long for the allocation lock
# Off only in the test that proves the lock is what keeps racing customers apart.
CAPACITY_SERIALIZE_ALLOCATIONS = True
# Share of the price refunded on cancellation by time left before the start; the first row whose
# notice is met applies; after the start nothing is refunded.
CAPACITY_CANCELLATION_POLICY = [(timedelta(days=7), 100), (timedelta(0), 50)]
# Staff may grant extensions for nothing up to this list value; above it they need the
# permission named here (finance's refund permission).
EXTENSION_COMPLIMENTARY_LIMIT = Decimal("500.00")
EXTENSION_COMPLIMENTARY_PERMISSION = "billing.issue_refund"
CAPACITY_ALTERNATIVES = 3  # alternative start times offered when a window is sold out
CAPACITY_ALTERNATIVE_SPAN = timedelta(days=3)  # how far from the asked start to look
# What one organization may hold at once, by tier (accounts.Organization.Tier): open holds
# (reservations and extensions waiting for payment), their node-hours, and nodes in live
# reservations (held, scheduled, provisioning or active). None means no limit. Sales raises them
# for one organization in the back office (its nullable override fields). capacity/limits.py.
# CAPACITY_LIMITS=false in the environment lifts them all (the load benchmark's servers).
CAPACITY_LIMITS: dict[str, dict[str, int | None]] = {
    "self_serve": {"open_holds": 5, "held_node_hours": 10_000, "live_nodes": 32},
    "enterprise": {"open_holds": 25, "held_node_hours": 250_000, "live_nodes": 512},
}
if not env.bool("CAPACITY_LIMITS", default=True):
    CAPACITY_LIMITS = {}
# New holds (reservations and extensions) per organization per minute; 0 (or None) turns it off.
CAPACITY_HOLD_RATE_PER_MINUTE: int | None = (
    env.int("CAPACITY_HOLD_RATE_PER_MINUTE", default=10) or None
)

# --- Hooks: a lower app calls a higher one's function named here (core/hooks.py) ------------
# A reservation entered a state that moves money (canceled with a refund due, failed, expired,
# or confirmed on invoice terms): billing refunds or invoices it, or cancels the payments still
# open for a lapsed hold, after the commit.
RESERVATION_SETTLEMENT_HOOK = "billing.services.settlement.settlement_enqueue"
# An extension's hold ended unpaid (lapsed or canceled): billing cancels its open payments.
EXTENSION_LAPSE_HOOK = "billing.services.lapses.extension_lapse_enqueue"
# How much credit an organization on invoice terms has in use (owed plus committed).
CREDIT_USED_HOOK = "billing.selectors.credit_used_for_org"
# Why an organization may not reserve more now (an invoice long overdue, one uncollectible, a
# dispute lost), or None: capacity asks before it holds a new block.
RESERVATIONS_REFUSED_HOOK = "billing.selectors.reservations_refused_for_org"

# The money a reservation holds now (paid less refunds, invoiced less credits): what a
# cancellation's refund is a share of. Refunding more than that share on a staff cancellation
# needs the permission below (finance's refund permission).
RESERVATION_SETTLED_HOOK = "billing.selectors.settled_for_reservation"
CANCELLATION_REFUND_PERMISSION = "billing.issue_refund"
# A cancellation or failure refund that Stripe fails is tried again by the settlement sweep (every
# 5 minutes) up to this many tries in all; after the last, or at once when Stripe refuses it for
# good, settlement stops and flags it to finance.
SETTLEMENT_REFUND_ATTEMPTS = 3

# A block fell short of what was sold (ran degraded, started late, force-released by staff):
# capacity reports the measured minutes, billing grants the SLA credit after the commit.
SLA_CREDIT_HOOK = "billing.services.sla.sla_credit_enqueue"
# The SLA credits of a reservation (cause, amount, status, when granted), for its API document.
RESERVATION_SLA_CREDITS_HOOK = "billing.selectors.sla_credits_for_reservation"

# --- SLA credits ----------------------------------------------------------------------------
# The one table of what earns a credit and how much (billing.services.sla). Per cause:
#   percent           of the block's price for the time lost (100: that time is given back);
#   grace_minutes     shorter than this earns nothing (a block booked to start now is
#                     provisioned after its payment, so a few minutes late is the normal case);
#   round_up_to_hour  the time lost counts in whole hours begun instead of to the minute.
# The time lost, priced at what the block was sold for per node-hour:
#   degraded        minutes a failed node stayed in the block without a spare, x 1 node;
#   late_start      minutes from the start to the nodes being up, x the block's nodes;
#   force_released  minutes from a staff release to the block's end, x the block's nodes.
# A cause left out (or percent 0) earns nothing. Never more than was paid for the block, less
# its refunds and earlier credits.
SLA_CREDIT_POLICY: dict[str, dict[str, Any]] = {
    "degraded": {"percent": Decimal("100"), "grace_minutes": 0, "round_up_to_hour": False},
    "late_start": {"percent": Decimal("100"), "grace_minutes": 15, "round_up_to_hour": True},
    "force_released": {"percent": Decimal("100"), "grace_minutes": 0, "round_up_to_hour": False},
}
# The sweep (billing.sweep_sla_credits) resumes credits left pending and credits what blocks
# that ended in the last SLA_CREDIT_SWEEP_DAYS fell short by where nothing asked for it (a
# message lost while the broker was down); it leaves what is younger than the STALE age to
# the grant task already on its way.
SLA_CREDIT_SWEEP_DAYS = 7
SLA_CREDIT_SWEEP_STALE = timedelta(minutes=15)

# --- Provisioning ---------------------------------------------------------------------------
PROVISIONING_DRIVER = env.str(
    "PROVISIONING_DRIVER", default="capacity.drivers.simulated.SimulatedDriver"
)
PROVISIONING_LEAD = timedelta(minutes=10)  # start provisioning this long before the start
PROVISIONING_CLEANUP_BUFFER = timedelta(minutes=0)  # release this long before the end
PROVISIONING_STUCK_AFTER = timedelta(minutes=15)  # a transition taking longer is retried
# Transient driver errors while provisioning are retried with exponential backoff (capped) until
# the block's start plus this grace; then the block fails and is refunded.
PROVISIONING_GIVE_UP_AFTER_START = timedelta(minutes=30)
PROVISIONING_RETRY_MAX_BACKOFF = timedelta(minutes=3)
PROVISIONING_ALERT_AFTER_RETRIES = 6  # an incident once, so operations hear early (~5 min)
PROVISIONING_MAX_RETRIES: int | None = None  # an extra cap on retries; None: the time budget
PROVISIONING_SYNC_RETRIES = 6  # a running block's end or nodes (extension, swap)
PROVISIONING_TEARDOWN_RETRIES = 10  # a canceled or failed block's (~40 min), then an incident
REMINDERS_BEFORE_END = [timedelta(hours=24), timedelta(hours=1)]
# No reminder comes earlier than this share of a block's length before its end (a 4-hour block
# hears 1 h before, not 24 h before, that is at once).
REMINDER_MAX_FRACTION = 0.25
PROVISIONING_SIMULATED_LATENCY = env.float("PROVISIONING_SIMULATED_LATENCY", default=2.0)
PROVISIONING_SIMULATED_FAILURE_RATE = env.float("PROVISIONING_SIMULATED_FAILURE_RATE", default=0.1)
PROVISIONING_SIMULATED_SEED = env.str("PROVISIONING_SIMULATED_SEED", default="hyperblock")
PROVISIONING_SIMULATED_BROKEN_NODES: list[str] = []
# Fernet key for secrets kept at rest (kubeconfigs); empty derives one from SECRET_KEY.
FIELD_ENCRYPTION_KEY = env.str("FIELD_ENCRYPTION_KEY", default="")

# --- Slurm -----------------------------------------------------------------------------------
# PROVISIONING_DRIVER=capacity.drivers.slurm.SlurmDriver drives a Slurm controller: each block
# is an advanced reservation on its nodes for its organization's account.
SLURM_CONF = env.str("SLURM_CONF", default="")  # empty: Slurm's own default (/etc/slurm)
SLURM_BIN_DIR = env.str("SLURM_BIN_DIR", default="")  # empty: scontrol, sinfo... from PATH
SLURM_COMMAND_TIMEOUT = env.float("SLURM_COMMAND_TIMEOUT", default=15.0)  # seconds per command
# With accounting (slurmdbd), each organization's account is made with sacctmgr first.
SLURM_ACCOUNTING = env.bool("SLURM_ACCOUNTING", default=False)
# Where customers log in to submit work to their block (shown with the access details).
SLURM_LOGIN_HOST = env.str("SLURM_LOGIN_HOST", default="login.hyperblock.example")
SLURM_LOGIN_PORT = env.int("SLURM_LOGIN_PORT", default=22)
SLURM_LOGIN_USER = env.str("SLURM_LOGIN_USER", default="")  # empty: the organization's account

# --- Stripe ---------------------------------------------------------------------------------
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
# Empty means Stripe itself; development and tests point this at localstripe.
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
# Stripe.js: the real one in production; localstripe serves a stand-in at /js.stripe.com/v3/.
STRIPE_JS_URL = env.str(
    "STRIPE_JS_URL",
    default=f"{STRIPE_API_BASE}/js.stripe.com/v3/"
    if STRIPE_API_BASE
    else "https://js.stripe.com/v3/",
)
STRIPE_TIMEOUT_SECONDS = 15
STRIPE_MAX_NETWORK_RETRIES = 2  # safe: every write carries an idempotency key
STRIPE_WEBHOOK_TOLERANCE_SECONDS = 300  # older signatures are refused as replays
STRIPE_USAGE_METER_EVENT = env.str("STRIPE_USAGE_METER_EVENT", default="hyperblock_tokens")
USAGE_MAX_AGE = timedelta(days=7)  # usage events older than this are refused

# --- Logging --------------------------------------------------------------------------------
# LOG_FORMAT=json writes one JSON object a line (for a log collector); the default is plain text.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_context": {"()": "core.logging.RequestContextFilter"},
        "redact_secrets": {"()": "core.logging.RedactSecretsFilter"},
    },
    "formatters": {
        "plain": {"format": "%(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "core.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["request_context", "redact_secrets"],
        },
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"axes": {"level": "WARNING"}},
}

# --- Proxies -------------------------------------------------------------------------------
# How many proxies (load balancers) stand in front of the web processes: the audit log then
# records the address the nearest one saw in X-Forwarded-For. 0: the connection's own address.
TRUSTED_PROXY_HOPS = env.int("TRUSTED_PROXY_HOPS", default=0)

# --- Metrics -------------------------------------------------------------------------------
# /metrics answers a scraper that sends this as a bearer token; empty: loopback only.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# --- Product --------------------------------------------------------------------------------
# The one limit on a reason staff give for an action: a longer one is refused with a message
# that says the limit, never cut (core.staff.reason_clean).
STAFF_REASON_MAX_LENGTH = 500

SITE_NAME = "Hyperblock"
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000")
SUPPORT_EMAIL = env.str("SUPPORT_EMAIL", default="support@hyperblock.local")
