"""Every field of every usage event is type-checked: a wrong type, a missing or empty field
or a number out of range refuses the whole batch with 400, names each such field by position
(`events[3].model`) and stores nothing."""

import json

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import UsageEvent
from tests.billing.test_usage import _clock, event, key, post, prices  # noqa: F401

HUGE = 10**30
WRONG = {
    "list": ["llama-70b"],
    "dict": {"name": "llama-70b"},
    "null": None,
    "bool": True,
    "float": 12.5,
    "huge int": HUGE,
    "empty string": "",
}
FIELDS = ("id", "key", "model", "input_tokens", "output_tokens", "time")
TEXT = {
    "invalid_type": "{field} must be a string",
    "invalid_length": "{field} must be 1 to {longest} characters",
}
LONGEST = {"id": 120, "key": 12, "model": 80}


def expected(field: str, value: object) -> tuple[str, str]:
    """The code and message a wrong `value` in `field` is refused with."""
    if field in ("input_tokens", "output_tokens"):
        if isinstance(value, int) and not isinstance(value, bool):
            return "out_of_range", f"{field} must be from 0 to 1000000000"
        return "invalid_type", f"{field} must be a whole number"
    if field == "time":
        if isinstance(value, str):
            return "invalid_datetime", "time must be ISO 8601, with a time zone"
        return "invalid_type", "time must be an ISO 8601 string"
    if isinstance(value, str):
        return "invalid_length", f"{field} must be 1 to {LONGEST[field]} characters"
    return "invalid_type", f"{field} must be a string"


CASES = [
    (field, name, value)
    for field in FIELDS
    for name, value in WRONG.items()
    # A null key means the reporting key's own usage: it is right.
    if not (field == "key" and value is None)
]


@pytest.fixture
def reporter(organization, owner, prices):
    return key(organization, owner, ["usage:write"])[1]


@pytest.mark.parametrize(("field", "kind", "value"), CASES, ids=[f"{f}-{k}" for f, k, _ in CASES])
def test_each_field_of_the_wrong_type_is_a_400_naming_it(reporter, field, kind, value):
    batch = [event(1), event(2), event(3), event(4, **{field: value})]
    answer = post(reporter, batch)
    assert answer.status_code == 400, answer.content
    code, message = expected(field, value)
    item = {"param": f"events[3].{field}", "code": code, "message": message}
    assert answer.json()["error"] == {"type": "invalid_request", **item, "errors": [item]}
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize("field", [f for f in FIELDS if f != "key"])
def test_a_missing_field_is_named(reporter, field):
    broken = {k: v for k, v in event(1).items() if k != field}
    answer = post(reporter, [event(0), broken])
    item = {"param": f"events[1].{field}", "code": "required", "message": f"{field} is required"}
    assert (answer.status_code, answer.json()["error"]["errors"]) == (400, [item])
    assert UsageEvent.objects.count() == 0


def test_every_bad_field_of_every_event_is_listed_in_order(reporter):
    batch = [
        event(1),
        "not an event",
        event(2, model=["llama-70b"], input_tokens=-1, time="2026-02-30T10:00:00Z"),
        event(3),
        {"id": 7, "key": "", "output_tokens": False},
    ]
    answer = post(reporter, batch)
    assert answer.status_code == 400
    listed = [(e["param"], e["code"]) for e in answer.json()["error"]["errors"]]
    assert listed == [
        ("events[1]", "invalid_type"),
        ("events[2].model", "invalid_type"),
        ("events[2].input_tokens", "out_of_range"),
        ("events[2].time", "invalid_datetime"),
        ("events[4].id", "invalid_type"),
        ("events[4].key", "invalid_length"),
        ("events[4].model", "required"),
        ("events[4].input_tokens", "required"),
        ("events[4].output_tokens", "invalid_type"),
        ("events[4].time", "required"),
    ]
    assert answer.json()["error"]["param"] == "events[1]"
    assert UsageEvent.objects.count() == 0


def test_a_time_without_a_zone_is_refused(reporter):
    answer = post(reporter, [event(1, time="2026-12-01T11:05:00")])
    assert answer.json()["error"]["errors"] == [
        {"param": "events[0].time", "code": "timezone_required", "message": "time must have a "
         "time zone"}
    ]  # fmt: skip


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_json_value_in_any_field_is_never_a_500(reporter, field, value):
    """Whatever a field holds, the answer is a 200, 207 or 400 in the usual shape; a 400 names
    exactly the field and stores nothing."""
    before = UsageEvent.objects.count()
    answer = post(reporter, [event(1), event(9, **{field: value})])
    assert answer.status_code in (200, 207, 400), answer.content
    if answer.status_code == 400:
        [error] = answer.json()["error"]["errors"]
        assert error["param"] == f"events[1].{field}"
        assert UsageEvent.objects.count() == before
    UsageEvent.objects.all().delete()


def test_a_good_batch_after_a_refused_one_is_stored_whole(reporter):
    assert post(reporter, [event(1), event(2, model=None)]).status_code == 400
    answer = post(reporter, [event(1), event(2)])
    assert (answer.status_code, answer.json()) == (
        200,
        {"accepted": 2, "duplicates": 0, "errors": []},
    )
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == ["ev-1", "ev-2"]


def test_a_batch_that_is_not_a_list_is_refused_as_before(reporter):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {reporter}")
    answer = client.post(
        "/api/v1/usage/", json.dumps({"events": {"0": event(1)}}), content_type="application/json"
    )
    assert answer.json()["error"]["errors"] == [
        {"param": "events", "code": "invalid", "message": "send a list of 1 to 1000 events"}
    ]
