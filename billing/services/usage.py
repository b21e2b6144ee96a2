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

from .. import gateway
from ..models import BillingAccount, LedgerEntry, ModelPrice, UsageEvent, UsageHour

logger = logging.getLogger(__name__)
MAX_BATCH = 1000
MAX_TOKENS = 10**9
MILLION = Decimal(1_000_000)


def _target(reporter: ApiKey, item: dict) -> tuple[Organization, ApiKey | None]:
    """Whose usage this is. A platform key (the model gateway) names the customer's key;
    any other key reports only for its own organization."""
    public_id = item.get("key")
    if public_id is None:  # the reporting key's own usage
        return reporter.organization, reporter
    if not isinstance(public_id, str):
        raise ValueError("key must be the public id of an API key")
    key = ApiKey.objects.select_related("organization").filter(public_id=public_id).first()
    if key is None or (
        key.organization_id != reporter.organization_id and not reporter.organization.is_platform
    ):
        raise ValueError("unknown key")
    return key.organization, key


def _parse(item: object, now: datetime, prices: set[str]) -> dict:
    if not isinstance(item, dict):
        raise ValueError("each event is an object")
    event_id = item.get("id")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 120:
        raise ValueError("id must be a string of 1 to 120 characters")
    if item.get("model") not in prices:
        raise ValueError(f"unknown model {item.get('model')!r}")
    tokens = {}
    for field in ("input_tokens", "output_tokens"):
        value = item.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOKENS:
            raise ValueError(f"{field} must be a whole number from 0 to {MAX_TOKENS}")
        tokens[field] = value
    occurred = parse_datetime(item["time"]) if isinstance(item.get("time"), str) else None
    if occurred is None or timezone.is_naive(occurred):
        raise ValueError("time must be ISO 8601 with a time zone")
    if occurred > now + timedelta(minutes=5) or occurred < now - settings.USAGE_MAX_AGE:
        raise ValueError("time is outside the accepted window")
    return {"event_id": event_id, "model": item["model"], "occurred_at": occurred, **tokens}


def usage_ingest(*, reporter: ApiKey, events: object) -> dict:
    """Store each new event once; duplicates (by id, per organization) are counted, bad events
    are reported by position, and the good ones are kept whatever the others are."""
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
        raise ValueError(f"send a list of 1 to {MAX_BATCH} events")
    now = timezone.now()
    prices = set(ModelPrice.objects.values_list("model", flat=True))
    rows, errors, seen = [], [], set()
    for index, item in enumerate(events):
        try:
            parsed = _parse(item, now, prices)
            organization, key = _target(reporter, item)
        except ValueError as exc:
            errors.append({"index": index, "message": str(exc)})
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
                    f"{hour:%Y-%m-%d %H}:00 UTC"
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
