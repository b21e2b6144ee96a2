"""One way to write a moment for people, with its zone, in the portal, the e-mails and the back
office ("Tue 1 Dec 2026, 10:00 UTC"; a date alone "Tue 1 Dec 2026"); ISO 8601 in the API."""

import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.conf import settings
from django.core import mail
from django.template import Context, Template
from django.utils import formats
from rest_framework import serializers

from backoffice.roles import OPERATIONS
from capacity import lifecycle, notifications
from capacity.models import Reservation
from core.dates import format_date, format_datetime, format_span
from tests.backoffice.conftest import make_staff, verified_client
from tests.capacity.conftest import NEXT_HOUR, catalog, frozen_clock  # noqa: F401
from tests.capacity.test_reservations import reserve
from tests.conftest import client_for

S = Reservation.State
START = "Tue 1 Dec 2026, 10:00 UTC"
END = "Wed 2 Dec 2026, 10:00 UTC"
# What templates may still pass to |date: machine values (ISO in attributes and links) and the
# short axis labels of the charts (hours, weekdays, day numbers), never a moment for reading.
# Machine values (c, Y-m-d) and the short labels of chart axes and calendar cells, whose day
# or hour sits under a heading that already names the month and the zone.
MACHINE_AND_AXIS_FORMATS = {
    "c",
    "Y-m-d",
    "Y-m",
    "H",
    "H:i",
    "D",
    "l",
    "j",
    "M",
    "j M",
    "D j M",
    "l j F",
    "j/n",
    "F Y",
}


def render(source: str, **context) -> str:
    return Template("{% load hb %}" + source).render(Context(context))


def test_a_moment_is_written_in_utc_with_its_zone_whatever_zone_it_came_in():
    berlin = datetime(2026, 12, 3, 11, 0, tzinfo=timezone(timedelta(hours=1)))
    assert format_datetime(berlin) == "Thu 3 Dec 2026, 10:00 UTC"
    assert render("{{ d|when }}", d=berlin) == "Thu 3 Dec 2026, 10:00 UTC"
    assert render("{{ d|day }}", d=date(2026, 12, 3)) == "Thu 3 Dec 2026"
    assert format_date(datetime(2026, 12, 3, 23, 30, tzinfo=UTC)) == "Thu 3 Dec 2026"
    assert render("{{ d|when }} {{ d|day }}", d=None) == "— —"
    assert format_span(NEXT_HOUR, NEXT_HOUR + timedelta(days=1)) == f"{START} – {END}"


def test_djangos_own_formats_are_the_same_so_the_admin_writes_moments_alike():
    moment = datetime(2026, 12, 2, 1, 52, 52, tzinfo=UTC)
    assert render("{{ d }}|{{ d|date }}|{{ d|date:'DATETIME_FORMAT' }}", d=moment) == (
        "Wed 2 Dec 2026, 01:52 UTC|Wed 2 Dec 2026|Wed 2 Dec 2026, 01:52 UTC"
    )
    assert formats.localize(date(2026, 12, 2)) == "Wed 2 Dec 2026"
    assert formats.get_format("SHORT_DATETIME_FORMAT") == settings.DATETIME_FORMAT


def test_the_api_keeps_iso_8601():
    moment = datetime(2026, 12, 2, 1, 52, 52, tzinfo=UTC)
    assert serializers.DateTimeField().to_representation(moment) == "2026-12-02T01:52:52Z"
    assert serializers.DateField().to_representation(date(2026, 12, 2)) == "2026-12-02"


# A moment written by hand in Python: a date format inside an f-string (ISO 8601 with its "T"
# for machines is the one allowed).
HAND_WRITTEN = re.compile(r"\{[^{}]*:%(?![Y]-%m-%dT)[^{}]*%[a-zA-Z][^{}]*\}")


def test_no_code_writes_a_moment_its_own_way():
    written = []
    for app in ("core", "accounts", "capacity", "billing", "backoffice", "portal"):
        for path in Path(settings.BASE_DIR, app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if HAND_WRITTEN.search(line):
                    written.append(
                        f"{path.relative_to(settings.BASE_DIR)}:{number}: {line.strip()}"
                    )
    assert written == []


def test_no_template_writes_a_moment_its_own_way():
    used = set()
    for path in Path(settings.BASE_DIR, "templates").rglob("*.*"):
        text = path.read_text()
        assert "naturaltime" not in text, path
        used |= set(re.findall(r"\|date:[\"']([^\"']*)[\"']", text))
    assert used <= MACHINE_AND_AXIS_FORMATS


@pytest.mark.django_db
def test_the_reservation_page_and_the_confirmation_email_write_the_window_alike(
    catalog,
    organization,
    owner,
    django_capture_on_commit_callbacks,
):
    reservation = reserve(organization, owner, catalog)
    lifecycle.reservation_transition(reservation=reservation, to=S.SCHEDULED, actor=None)
    page = client_for(owner).get(f"/o/{organization.slug}/reservations/{reservation.public_id}/")
    html = page.content.decode()
    assert f"<dt>Start</dt><dd>{START}</dd>" in html
    assert f"<dt>End</dt><dd>{END}</dd>" in html
    listing = client_for(owner).get(f"/o/{organization.slug}/reservations/").content.decode()
    assert f'<td class="hide-sm">{START} → {END}</td>' in listing
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        notifications.notification_send(reservation, "reservation_scheduled")
    [confirmation] = mail.outbox
    assert f"2 × H100 in US East, from {START} for 24 hours." in confirmation.body


@pytest.mark.django_db
def test_the_admin_change_list_and_change_form_write_moments_alike(
    catalog,
    organization,
    owner,
):
    reservation = reserve(organization, owner, catalog)
    client = verified_client(make_staff(OPERATIONS))
    changelist = client.get("/admin/capacity/reservation/").content.decode()
    assert (
        f'<td class="field-window"><span class="nowrap">{START}</span>'
        '<div class="quiet">24 h</div></td>'
    ) in changelist
    change = client.get(f"/admin/capacity/reservation/{reservation.pk}/change/").content.decode()
    created = format_datetime(reservation.created_at)
    assert created == "Tue 1 Dec 2026, 09:30 UTC"
    assert f'<td class="ops-when">{created}</td>' in change
