"""Negotiated rates: the price per GPU-hour sales agreed with one organization for a GPU model
(in one region, or every region) for reservations starting within a window.

Two rates of an organization for the same GPU model and region may not overlap in time, or the
price a customer pays would depend on which one pricing happens to read first. An every-region
rate may overlap a region's own rate: pricing prefers the region's (`pricing.pick_rate`).
Writers lock the organization's row before checking, so two staff members cannot each add one
half of an overlap; on PostgreSQL an exclusion constraint (migration 0006) is the guarantee.
"""

from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Organization, User
from accounts.services.organizations import organization_lock
from core import audit
from core.dates import format_datetime
from core.errors import Conflict, ServiceError
from core.staff import reason_clean, require_staff_permission

from . import pricing
from .models import GpuModel, NegotiatedRate, Region


def overlapping_rates_for_org(
    *,
    organization: Organization,
    gpu_model: GpuModel,
    region: Region | None,
    valid_from: datetime,
    valid_until: datetime,
    exclude_pk: int | None = None,
) -> QuerySet[NegotiatedRate]:
    """Rates of the same organization, GPU model and region whose window meets [from, until)."""
    rates = NegotiatedRate.objects.filter(
        organization=organization,
        gpu_model=gpu_model,
        valid_from__lt=valid_until,
        valid_until__gt=valid_from,
    )
    rates = rates.filter(region__isnull=True) if region is None else rates.filter(region=region)
    if exclude_pk is not None:
        rates = rates.exclude(pk=exclude_pk)
    return rates.order_by("valid_from")


def validate_rate(
    *,
    organization: Organization,
    gpu_model: GpuModel,
    region: Region | None,
    price_per_gpu_hour: object,
    valid_from: datetime,
    valid_until: datetime,
    exclude_pk: int | None = None,
) -> Decimal:
    """Check a rate as it would be saved and return its price; raise ServiceError saying what is
    wrong. Locks the organization's row, so call it in the transaction that then saves (the
    admin's form runs its validation and the save in one)."""
    price = pricing.parse_price_per_gpu_hour(price_per_gpu_hour)
    for name, moment in (("valid_from", valid_from), ("valid_until", valid_until)):
        if not isinstance(moment, datetime) or timezone.is_naive(moment):
            raise ServiceError("Give a date and time with a time zone.", param=name)
    if valid_until <= valid_from:
        raise ServiceError("The rate must end after it starts.", param="valid_until")
    organization_lock(organization)
    clash = overlapping_rates_for_org(
        organization=organization,
        gpu_model=gpu_model,
        region=region,
        valid_from=valid_from,
        valid_until=valid_until,
        exclude_pk=exclude_pk,
    ).first()
    if clash is not None:
        where = f"in {region.code}" if region is not None else "in every region"
        raise Conflict(
            f"{organization.name} already has a {gpu_model.name} rate {where} from "
            f"{format_datetime(clash.valid_from)} to {format_datetime(clash.valid_until)} "
            f"({clash.price_per_gpu_hour.normalize():f}/GPU-h) that overlaps this window. End "
            "that rate first, or choose a window that starts when it ends.",
            code="rate_overlap",
            param="valid_from",
        )
    return price


def _snapshot(rate: NegotiatedRate) -> dict[str, str | None]:
    return {
        "gpu_model": rate.gpu_model.slug,
        "region": rate.region.code if rate.region is not None else None,
        "price_per_gpu_hour": str(rate.price_per_gpu_hour),
        "valid_from": rate.valid_from.isoformat(),
        "valid_until": rate.valid_until.isoformat(),
    }


@transaction.atomic
def negotiated_rate_create(
    *,
    organization: Organization,
    actor: User,
    gpu_model: GpuModel,
    region: Region | None,
    price_per_gpu_hour: object,
    valid_from: datetime,
    valid_until: datetime,
    reason: str = "",
) -> NegotiatedRate:
    require_staff_permission(actor, "capacity.add_negotiatedrate", "add negotiated rates")
    reason = reason_clean(reason, required=False)
    price = validate_rate(
        organization=organization,
        gpu_model=gpu_model,
        region=region,
        price_per_gpu_hour=price_per_gpu_hour,
        valid_from=valid_from,
        valid_until=valid_until,
    )
    rate = NegotiatedRate.objects.create(
        organization=organization,
        gpu_model=gpu_model,
        region=region,
        price_per_gpu_hour=price,
        valid_from=valid_from,
        valid_until=valid_until,
        created_by=actor,
    )
    audit.record(
        action="negotiated_rate.created",
        actor=actor,
        organization=organization,
        target=rate,
        data=_snapshot(rate),
        reason=reason,
    )
    return rate


@transaction.atomic
def negotiated_rate_update(
    *,
    rate: NegotiatedRate,
    actor: User,
    gpu_model: GpuModel,
    region: Region | None,
    price_per_gpu_hour: object,
    valid_from: datetime,
    valid_until: datetime,
    reason: str = "",
) -> NegotiatedRate:
    """Change a rate. Reservations already made keep the price they were made at."""
    require_staff_permission(actor, "capacity.change_negotiatedrate", "change negotiated rates")
    reason = reason_clean(reason, required=False)
    organization = rate.organization
    price = validate_rate(
        organization=organization,
        gpu_model=gpu_model,
        region=region,
        price_per_gpu_hour=price_per_gpu_hour,
        valid_from=valid_from,
        valid_until=valid_until,
        exclude_pk=rate.pk,
    )
    locked = (
        NegotiatedRate.objects.select_for_update(of=("self",))
        .select_related("gpu_model", "region")
        .get(pk=rate.pk)
    )
    before = _snapshot(locked)
    locked.gpu_model, locked.region = gpu_model, region
    locked.price_per_gpu_hour = price
    locked.valid_from, locked.valid_until = valid_from, valid_until
    after = _snapshot(locked)
    if before == after:
        return locked
    locked.save(
        update_fields=["gpu_model", "region", "price_per_gpu_hour", "valid_from", "valid_until"]
    )
    audit.record(
        action="negotiated_rate.changed",
        actor=actor,
        organization=organization,
        target=locked,
        data={"from": before, "to": after},
        reason=reason,
    )
    return locked


@transaction.atomic
def negotiated_rate_delete(*, rate: NegotiatedRate, actor: User, reason: str = "") -> None:
    """Remove a rate. Reservations already made keep the price they were made at."""
    require_staff_permission(actor, "capacity.delete_negotiatedrate", "delete negotiated rates")
    reason = reason_clean(reason, required=False)
    organization = organization_lock(rate.organization)
    locked = NegotiatedRate.objects.select_related("gpu_model", "region").filter(pk=rate.pk).first()
    if locked is None:
        raise Conflict("This rate was already deleted.", code="already_deleted")
    snapshot = _snapshot(locked)
    pk = locked.pk
    locked.delete()
    audit.record(
        action="negotiated_rate.deleted",
        actor=actor,
        organization=organization,
        data={"rate": pk, **snapshot},
        reason=reason,
    )
