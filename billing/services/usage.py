"""Token usage: ingest the gateway's events once each, aggregate them per organization, model
and hour, price them, book them in the ledger and report them to Stripe's usage billing."""

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import ApiKey, Organization
from capacity.pricing import money
from core.dates import format_datetime

from .. import gateway
from ..models import BillingAccount, LedgerEntry, ModelPrice, UsageEvent, UsageHour

logger = logging.getLogger(__name__)
MAX_BATCH = 1000
MAX_TOKENS = 10**9
MILLION = Decimal(1_000_000)


MAX_ID = 120  # UsageEvent.event_id
MAX_MODEL = 80  # ModelPrice.model
MAX_KEY = 12  # ApiKey.public_id
# An event's fields in the order they are checked (and reported).
FIELDS = ("id", "key", "model", "input_tokens", "output_tokens", "time")


class EventError(ValueError):
    """One field of one event is wrong: `field` is None when the event is not an object."""

    def __init__(self, field: str | None, code: str, message: str) -> None:
        super().__init__(message)
        self.field, self.code, self.message = field, code, message


class MalformedEvents(ValueError):
    """Events that no catalog or clock could make right (a wrong type, a missing or empty
    field, a number out of range, a time that is no time): the batch is refused whole, every
    such field named, and nothing is stored. `errors` holds (index, error) in order."""

    def __init__(self, errors: list[tuple[int, EventError]]) -> None:
        super().__init__(f"{len(errors)} malformed field(s)")
        self.errors = errors


def _text(item: dict, field: str, longest: int, *, optional: bool = False) -> str | None:
    value = item.get(field)
    if value is None and optional:
        return None
    if value is None and field not in item:
        raise EventError(field, "required", f"{field} is required")
    if not isinstance(value, str):
        raise EventError(field, "invalid_type", f"{field} must be a string")
    if not 1 <= len(value) <= longest:
        raise EventError(field, "invalid_length", f"{field} must be 1 to {longest} characters")
    return value


def _tokens(item: dict, field: str) -> int:
    value = item.get(field)
    if field not in item:
        raise EventError(field, "required", f"{field} is required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise EventError(field, "invalid_type", f"{field} must be a whole number")
    if not 0 <= value <= MAX_TOKENS:
        raise EventError(field, "out_of_range", f"{field} must be from 0 to {MAX_TOKENS}")
    return value


def _time(item: dict) -> datetime:
    value = item.get("time")
    if "time" not in item:
        raise EventError("time", "required", "time is required")
    if not isinstance(value, str):
        raise EventError("time", "invalid_type", "time must be an ISO 8601 string")
    try:
        occurred = parse_datetime(value)
    except ValueError:  # well formed, but no such day or hour (2026-02-30)
        occurred = None
    if occurred is None:
        raise EventError("time", "invalid_datetime", "time must be ISO 8601, with a time zone")
    if timezone.is_naive(occurred):
        raise EventError("time", "timezone_required", "time must have a time zone")
    return occurred


def _well_formed(item: object) -> list[EventError]:
    """Every field of one event whose type or shape is wrong (empty when it is sound)."""
    if not isinstance(item, dict):
        return [EventError(None, "invalid_type", "each event is an object")]
    checks = {
        "id": lambda: _text(item, "id", MAX_ID),
        "key": lambda: _text(item, "key", MAX_KEY, optional=True),
        "model": lambda: _text(item, "model", MAX_MODEL),
        "input_tokens": lambda: _tokens(item, "input_tokens"),
        "output_tokens": lambda: _tokens(item, "output_tokens"),
        "time": lambda: _time(item),
    }
    errors = []
    for field in FIELDS:
        try:
            checks[field]()
        except EventError as error:
            errors.append(error)
    return errors


def _target(reporter: ApiKey, item: dict) -> tuple[Organization, ApiKey | None]:
    """Whose usage this is. A platform key (the model gateway) names the customer's key;
    any other key reports only for its own organization."""
    public_id = item.get("key")
    if public_id is None:  # the reporting key's own usage
        return reporter.organization, reporter
    key = ApiKey.objects.select_related("organization").filter(public_id=public_id).first()
    if key is None or (
        key.organization_id != reporter.organization_id and not reporter.organization.is_platform
    ):
        raise EventError("key", "unknown_key", "unknown key")
    return key.organization, key


def _parse(item: dict, now: datetime, prices: set[str]) -> dict:
    """A well-formed event checked against the catalog and the clock."""
    if item["model"] not in prices:
        known = ", ".join(sorted(prices)) or "none yet"
        raise EventError(
            "model", "unknown_model", f"unknown model {item['model']!r}; priced models: {known}"
        )
    occurred = _time(item)
    if occurred > now + timedelta(minutes=5) or occurred < now - settings.USAGE_MAX_AGE:
        raise EventError("time", "time_out_of_window", "time is outside the accepted window")
    return {
        "event_id": item["id"],
        "model": item["model"],
        "occurred_at": occurred,
        "input_tokens": item["input_tokens"],
        "output_tokens": item["output_tokens"],
    }


def usage_ingest(*, reporter: ApiKey, events: object) -> dict:
    """Store each new event once; duplicates (by id, per organization) are counted.

    A malformed event refuses the whole batch (MalformedEvents, nothing stored). Events that
    are well formed but name a model, key or time we do not take are reported by position,
    and the good ones are kept whatever the others are."""
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
        raise ValueError(f"send a list of 1 to {MAX_BATCH} events")
    malformed = [
        (index, error) for index, item in enumerate(events) for error in _well_formed(item)
    ]
    if malformed:
        raise MalformedEvents(malformed)
    now = timezone.now()
    prices = set(ModelPrice.objects.values_list("model", flat=True))
    rows, errors, seen = [], [], set()
    for index, item in enumerate(events):
        try:
            parsed = _parse(item, now, prices)
            organization, key = _target(reporter, item)
        except EventError as error:
            errors.append(
                {
                    "index": index,
                    "param": f"events[{index}].{error.field}",
                    "code": error.code,
                    "message": error.message,
                }
            )
            continue
        identity = (organization.pk, parsed["event_id"])
        if identity in seen:
            continue
        seen.add(identity)
        rows.append(UsageEvent(organization=organization, api_key=key, **parsed))
    existing = set()
    for organization_id in {row.organization_id for row in rows}:
        ids = [row.event_id for row in rows if row.organization_id == organization_id]
        existing |= {
            (organization_id, event_id)
            for event_id in UsageEvent.objects.filter(
                organization_id=organization_id, event_id__in=ids
            ).values_list("event_id", flat=True)
        }
    fresh = [row for row in rows if (row.organization_id, row.event_id) not in existing]
    UsageEvent.objects.bulk_create(fresh, ignore_conflicts=True, batch_size=500)  # races: once
    return {
        "accepted": len(fresh),
        "duplicates": len(events) - len(errors) - len(fresh),
        "errors": errors,
    }


def usage_aggregate(now: datetime | None = None) -> int:
    """Roll events of finished hours into UsageHour rows, book the cost, report to Stripe.
    Each event is counted in exactly one run (it is marked under a row lock)."""
    now = now or timezone.now()
    closed = now.replace(minute=0, second=0, microsecond=0)
    prices = {p.model: p for p in ModelPrice.objects.all()}
    booked = 0
    with transaction.atomic():
        pending = list(
            UsageEvent.objects.select_for_update(skip_locked=True)
            .filter(hour__isnull=True, occurred_at__lt=closed)
            .order_by("pk")[:50_000]
        )
        groups: dict[tuple, list[UsageEvent]] = defaultdict(list)
        for event in pending:
            hour = event.occurred_at.replace(minute=0, second=0, microsecond=0)
            groups[(event.organization_id, event.model, hour)].append(event)
        for (organization_id, model, hour), events in groups.items():
            price = prices[model]
            usage, _ = UsageHour.objects.select_for_update().get_or_create(
                organization_id=organization_id,
                model=model,
                hour=hour,
                defaults={"currency": price.currency},
            )
            added_in = sum(e.input_tokens for e in events)
            added_out = sum(e.output_tokens for e in events)
            cost = money(
                added_in * price.input_per_million / MILLION
                + added_out * price.output_per_million / MILLION
            )
            usage.input_tokens += added_in
            usage.output_tokens += added_out
            usage.cost += cost
            usage.pushed_at = None  # the total changed: report it again
            usage.save()
            UsageEvent.objects.filter(pk__in=[e.pk for e in events]).update(hour=usage)
            LedgerEntry.objects.create(
                organization_id=organization_id,
                kind=LedgerEntry.Kind.USAGE,
                amount=cost,
                currency=price.currency,
                usage_hour=usage,
                description=(
                    f"{model}: {added_in:,} input and {added_out:,} output tokens, "
                    f"the hour from {format_datetime(hour)}"
                ),
            )
            booked += 1
    usage_push()
    return booked


def usage_push() -> int:
    """Report every hour whose total changed as a meter event with a deterministic identifier
    (the hour and its token total), so a replay is harmless."""
    pushed = 0
    for usage in UsageHour.objects.filter(pushed_at__isnull=True).order_by("pk")[:1000]:
        account = BillingAccount.objects.filter(organization_id=usage.organization_id).first()
        if account is None:
            continue
        total = usage.input_tokens + usage.output_tokens
        try:
            gateway.meter_event(
                event_name=settings.STRIPE_USAGE_METER_EVENT,
                customer_id=account.stripe_customer_id,
                value=total,
                timestamp=int(usage.hour.timestamp()),
                identifier=f"hb-usage-{usage.pk}-{total}",
            )
        except gateway.PaymentError as exc:
            logger.warning("usage for %s not reported to Stripe yet: %s", usage, exc.message)
            break
        UsageHour.objects.filter(
            pk=usage.pk, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
        ).update(pushed_at=timezone.now())
        pushed += 1
    return pushed
