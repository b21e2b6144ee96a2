"""Quotes: a held reservation that sales makes on a customer's behalf, at a price sales set
(or the customer's own negotiated or list price), valid for up to two weeks.

The nodes are allocated at once, under the same pool lock as every reservation, so a quote
never overbooks and is really there when the customer says yes. The customer then pays it by
card (the ordinary payment flow for held reservations), or accepts it on invoice terms, or
declines it (cancels). The hold-expiry sweep expires it at the end of its validity.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts import credit
from accounts.guards import (
    require_active_organization,
    require_permission,
    require_verified_email,
)
from accounts.models import Organization, User
from accounts.permissions import Permission
from accounts.services.organizations import organization_lock
from core.dates import format_datetime
from core.errors import Conflict, ServiceError
from core.money import format_money
from core.staff import require_staff_permission

from . import lifecycle, notifications, pricing, provisioning, selectors, services
from .models import GpuModel, Region, Reservation
from .windows import Window, validate_node_count

S = Reservation.State
MAX_VALIDITY = timedelta(days=14)
MIN_VALIDITY = timedelta(hours=1)
NOTE_MAX = 2000
MAX_TOTAL = Decimal("1000000000000")  # a reservation's total has 12 digits before the point


def reservation_is_quote(reservation: Reservation) -> bool:
    return reservation.quoted_by_id is not None or reservation.price_source == "quote"


@dataclass(frozen=True)
class QuotePreview:
    """What a quote would be, for sales to look at before making it."""

    price: pricing.Quote
    standard: pricing.Quote  # the customer's own price for the same block, for comparison
    valid_until: datetime
    capped_at_start: bool  # the validity ends at the block's start, before the days asked
    free_nodes: int


def _quoted_price(value: object) -> Decimal | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # the customer's own price
    return pricing.parse_price_per_gpu_hour(value)


def _valid_until(window: Window, valid_for: timedelta, now: datetime) -> tuple[datetime, bool]:
    if not MIN_VALIDITY <= valid_for <= MAX_VALIDITY:
        raise ServiceError(
            f"A quote is valid for between 1 hour and {MAX_VALIDITY.days} days.",
            param="valid_days",
        )
    if window.starts_on_payment:
        raise ServiceError(
            "Give the quote a start time: the customer needs to know when the block runs.",
            param="starts_at",
        )
    until = now + valid_for
    # A quote paid after its block started would charge for hours already gone.
    if until > window.starts_at:
        return window.starts_at, True
    return until, False


def quote_preview(
    *,
    organization: Organization,
    gpu_model: GpuModel,
    region: Region,
    node_count: int,
    window: Window,
    price_per_gpu_hour: object = None,
    valid_for: timedelta,
) -> QuotePreview:
    """Price a quote and check its inputs without holding anything."""
    validate_node_count(node_count)
    quoted = _quoted_price(price_per_gpu_hour)
    valid_until, capped = _valid_until(window, valid_for, timezone.now())

    def priced(quoted_price: Decimal | None) -> pricing.Quote:
        return pricing.quote_for_sale(
            organization=organization,
            gpu_model=gpu_model,
            region=region,
            node_count=node_count,
            starts_at=window.starts_at,
            ends_at=window.ends_at,
            quoted_price=quoted_price,
        )

    standard = priced(None)
    price = standard if quoted is None else priced(quoted)
    if price.total >= MAX_TOTAL:
        raise ServiceError(
            f"That quote would come to {format_money(price.total, price.currency)}, more than "
            "one reservation can hold. Lower the price or split the block.",
            param="price_per_gpu_hour",
        )
    clusters = selectors.pool_clusters(gpu_model, region)
    free = selectors.free_nodes_by_cluster(
        [c.pk for c in clusters], window.starts_at, window.ends_at
    )
    return QuotePreview(
        price=price,
        standard=standard,
        valid_until=valid_until,
        capped_at_start=capped,
        free_nodes=max(free.values(), default=0),
    )


def quote_create(
    *,
    organization: Organization,
    actor: User,
    gpu_model: GpuModel,
    region: Region,
    node_count: int,
    window: Window,
    valid_for: timedelta,
    price_per_gpu_hour: object = None,
    note: str = "",
) -> Reservation:
    """Hold `node_count` nodes for the organization at the quoted price until the validity
    ends (at the latest when the block starts). Never confirmed on its own, not even on
    invoice terms: the customer accepts it. Raises SoldOut when the pool has no room."""
    require_staff_permission(actor, "capacity.create_quote", "make quotes")
    require_active_organization(organization)
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        raise ServiceError(f"Keep the note to {NOTE_MAX} characters.", param="note")
    preview = quote_preview(
        organization=organization,
        gpu_model=gpu_model,
        region=region,
        node_count=node_count,
        window=window,
        price_per_gpu_hour=price_per_gpu_hour,
        valid_for=valid_for,
    )
    quote = services.capacity_hold(
        organization=organization,
        created_by=None,  # lifecycle e-mails go to the customer's billing address, not to sales
        gpu_model=gpu_model,
        region=region,
        node_count=node_count,
        window=window,
        price=preview.price,
        hold_expires_at=preview.valid_until,
        quoted_by=actor,
        quote_note=note,
    )
    notifications.quote_notification_send(quote)
    return quote


def quote_accept(*, reservation: Reservation, actor: User) -> Reservation:
    """The customer accepts a quote on invoice terms: it is confirmed (scheduled) and billing
    invoices it after the commit. A card customer pays it instead."""
    organization = reservation.organization
    require_permission(
        actor=actor, organization=organization, permission=Permission.MANAGE_RESERVATIONS
    )
    require_verified_email(actor)
    accepted = _accept_locked(reservation=reservation, actor=actor)
    if accepted.starts_at <= timezone.now() + settings.PROVISIONING_LEAD:
        provisioning.reservation_start(accepted)
    return accepted


@transaction.atomic
def _accept_locked(*, reservation: Reservation, actor: User) -> Reservation:
    organization = organization_lock(reservation.organization)
    require_active_organization(organization)
    locked = Reservation.objects.select_for_update().get(pk=reservation.pk)
    if not reservation_is_quote(locked):
        raise Conflict("This reservation is not a quote.", code="not_a_quote")
    if locked.state != S.HELD:
        raise Conflict(
            f"This quote is {locked.get_state_display().lower()}; it can no longer be accepted.",
            code="not_acceptable",
        )
    if locked.hold_expires_at is not None and locked.hold_expires_at <= timezone.now():
        raise Conflict(
            f"This quote was valid until {format_datetime(locked.hold_expires_at)}. Ask your "
            "account manager for a new one.",
            code="quote_expired",
        )
    if not organization.on_invoice_terms:
        raise Conflict(
            f"{organization.name} pays by card: pay "
            f"{format_money(locked.total, locked.currency)} to confirm this quote.",
            code="pay_by_card",
        )
    credit.require_credit(organization=organization, amount=locked.total)
    confirmed = lifecycle.reservation_transition(
        reservation=locked,
        to=S.SCHEDULED,
        actor=actor,
        reason=f"Quote accepted on invoice terms (net {organization.payment_days}).",
        data={"quote": True},
    )
    return confirmed
