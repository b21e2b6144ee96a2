"""A failure inside the API answers in the usual error shape and gives nothing of itself away;
the log has the whole story with its secrets masked."""

import logging

import pytest

from tests.api.test_api import api, key_for

pytestmark = pytest.mark.django_db


def test_an_unexpected_failure_is_a_plain_500(organization, owner, monkeypatch, caplog):
    key = key_for(organization, owner)

    def broken(*args, **kwargs):
        raise RuntimeError("connection to db://admin:hunter2@10.0.0.5 lost, key sk_live_abc123")

    monkeypatch.setattr("capacity.api.selectors.reservations_for_org", broken)
    with caplog.at_level(logging.ERROR, logger="core.api"):
        response = api(key, HTTP_X_REQUEST_ID="req-support-42").get("/api/v1/reservations/")
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "type": "api_error",
            "code": "internal_error",
            "message": "Something went wrong on our side. If it persists, tell support the "
            "request id req-support-42.",
            "param": None,
        }
    }
    assert "hunter2" not in response.text
    [record] = [r for r in caplog.records if r.name == "core.api"]
    assert record.getMessage() == "API request failed"
    assert record.exc_info[0] is RuntimeError
