from unittest import mock

import pytest
from celery import Celery
from django.db import OperationalError


def test_healthz_answers_without_touching_anything(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_database_and_broker(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


@pytest.mark.django_db
def test_readyz_names_an_unreachable_broker(client, monkeypatch):
    # A loopback port nothing listens on: the broker is down.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery lets it override the app's
    unreachable = Celery("unreachable", broker="redis://127.0.0.1:9/0", set_as_current=False)
    monkeypatch.setattr("portal.views.celery_app", unreachable)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"].startswith("error: ")
    assert response.json()["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_readyz_names_a_failing_database(client):
    with mock.patch("portal.views._check_database", side_effect=OperationalError("down")):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "error: OperationalError", "broker": "ok"},
    }


def test_every_response_carries_a_request_id(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="abcdef123456")
    assert response["X-Request-ID"] == "abcdef123456"
    injected = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert len(injected["X-Request-ID"]) == 32
