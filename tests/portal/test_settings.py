import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def _load_production(**env: str) -> subprocess.CompletedProcess:
    code = (
        "import django, json; from django.conf import settings; django.setup();"
        "print(json.dumps([settings.DEBUG, settings.SECURE_SSL_REDIRECT,"
        " settings.SECURE_HSTS_SECONDS, settings.SESSION_COOKIE_SECURE,"
        " settings.CSRF_COOKIE_SECURE, settings.ALLOWED_HOSTS]))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "DJANGO_SETTINGS_MODULE": "portal.settings.production", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"DJANGO_ALLOWED_HOSTS": "console.example.com"}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "x" * 50}, "DJANGO_ALLOWED_HOSTS"),
    ],
)
def test_production_refuses_to_start_without_its_secrets(env, missing):
    result = _load_production(**env)
    assert result.returncode == 1
    assert f"Set the {missing} environment variable." in result.stderr


def test_production_is_hardened():
    result = _load_production(
        DJANGO_SECRET_KEY="x" * 50, DJANGO_ALLOWED_HOSTS="console.example.com,api.example.com"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        '[false, true, 31536000, true, true, ["console.example.com", "api.example.com"]]'
    )


def test_argon2_is_the_first_password_hasher_outside_tests():
    from portal.settings import base

    assert base.PASSWORD_HASHERS[0] == "django.contrib.auth.hashers.Argon2PasswordHasher"


def test_sqlite_default_queues_writers():
    from portal.settings import base

    assert base.SQLITE_OPTIONS["transaction_mode"] == "IMMEDIATE"
    assert "PRAGMA journal_mode=WAL;" in base.SQLITE_OPTIONS["init_command"]


def test_celery_is_json_only_late_acking_and_time_limited():
    from portal.celery import app

    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (300, 360)
    assert {q.name for q in conf.task_queues} == {"default", "provisioning", "billing", "email"}
    assert (
        conf.beat_schedule["accounts.clean_login_attempts"]["task"]
        == "accounts.clean_login_attempts"
    )
    assert (
        os.environ.get("CELERY_BROKER_URL", "filesystem://localhost/") == settings.CELERY_BROKER_URL
    )


def test_deploy_checks_pass_with_the_production_settings():
    """Django's own deployment checklist, warnings included; silenced checks are listed, each
    with its reason, in SILENCED_SYSTEM_CHECKS (portal/settings/base.py)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "portal.settings.production",
            "DJANGO_SECRET_KEY": "k3y-" + "x7Q-" * 16,
            "DJANGO_ALLOWED_HOSTS": "console.example.com",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "System check identified no issues (1 silenced)."


def test_an_empty_variable_counts_as_not_set():
    """An env file copied from .env.example has KEY= lines: their defaults apply."""
    result = _load_production(
        DJANGO_SECRET_KEY="x" * 50,
        DJANGO_ALLOWED_HOSTS="console.example.com",
        DATABASE_URL="",
        EMAIL_URL="",
        CACHE_URL="",
        TRUSTED_PROXY_HOPS="",
    )
    assert result.returncode == 0, result.stderr


def test_a_worker_serves_its_task_metrics_when_asked(monkeypatch):
    import socket
    import urllib.request

    from portal.celery import _serve_worker_metrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WORKER_METRICS_PORT", str(port))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    _serve_worker_metrics()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    assert "# TYPE hyperblock_celery_task_seconds histogram" in text


def _database_settings(module: str) -> list:
    code = (
        "import django, json; from django.conf import settings; django.setup();"
        "db = settings.DATABASES['default'];"
        "print(json.dumps([db['ENGINE'], db['CONN_MAX_AGE'], db['CONN_HEALTH_CHECKS']]))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": module,
            "DJANGO_SECRET_KEY": "x" * 50,
            "DJANGO_ALLOWED_HOSTS": "console.example.com",
            "DATABASE_URL": "postgres://hb@db.example.com:5432/hyperblock",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_production_keeps_database_connections_and_checks_them_before_use():
    assert _database_settings("portal.settings.production") == [
        "django.db.backends.postgresql",
        60,
        True,
    ]


def test_the_development_server_closes_each_requests_database_connection():
    # runserver's threads never close a kept connection: `make run` would run out of them.
    assert _database_settings("portal.settings.local") == ["django.db.backends.postgresql", 0, True]
