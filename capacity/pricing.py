"""The one pricing function: (organization, GPU model, region, nodes, window) to a quote."""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from accounts.models import Organization
from core.errors import ServiceError
from core.money import format_money

from .models import DurationDiscount, GpuModel, ListPrice, NegotiatedRate, Region
from .windows import Window

CENT = Decimal("0.01")


def money(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class QuoteLine:
    description: str
    amount: Decimal

    def as_json(self) -> dict:
        return {"description": self.description, "amount": str(self.amount)}


@dataclass(frozen=True)
class Quote:
    currency: str
    price_per_gpu_hour: Decimal
    price_source: str  # "list", "negotiated" or "quote"
    gpu_hours: int
    subtotal: Decimal
    discount: Decimal
    total: Decimal
    lines: list[QuoteLine] = field(default_factory=list)

    @property
    def effective_per_gpu_hour(self) -> Decimal:
        return (
            (self.total / self.gpu_hours).quantize(Decimal("0.0001"))
            if self.gpu_hours
            else Decimal(0)
        )

    def lines_json(self) -> list[dict]:
        return [line.as_json() for line in self.lines]


class PriceUnavailable(LookupError):
    """No list price exists for this GPU model in this region."""


def _places(price: Decimal) -> int:
    """Cents, or as many places as the price has (a quoted 1.8750 shows all four)."""
    exponent = price.normalize().as_tuple().exponent
    return max(2, -exponent) if isinstance(exponent, int) else 2  # NaN and infinity: none


def negotiated_rates(
    organization: Organization | None, gpu_model: GpuModel
) -> list[NegotiatedRate]:
    """The organization's rates for a GPU model, newest first."""
    if organization is None:
        return []
    return list(
        NegotiatedRate.objects.filter(organization=organization, gpu_model=gpu_model).order_by(
            "-valid_from"
        )
    )


def pick_rate(rates: list[NegotiatedRate], region: Region, at: datetime) -> NegotiatedRate | None:
    """The rate valid at `at`: a region's own rate beats an every-region one."""
    valid = [r for r in rates if r.valid_from <= at < r.valid_until]
    return next((r for r in valid if r.region_id == region.pk), None) or next(
        (r for r in valid if r.region_id is None), None
    )


def quote(
    *,
    organization: Organization | None,
    gpu_model: GpuModel,
    region: Region,
    node_count: int,
    starts_at: datetime,
    ends_at: datetime,
    list_price: ListPrice | None = None,
    discounts: list[DurationDiscount] | None = None,
    rates: list[NegotiatedRate] | None = None,
    quoted_price: Decimal | None = None,
) -> Quote:
    """Price a block. A price sales quoted (`quoted_price`) wins; else a negotiated rate valid
    at the start replaces the list price and its duration discounts; otherwise the best
    duration discount applies to the list price.

    `list_price`, `discounts` and `rates` may be passed in when pricing many offerings at once.
    """
    hours = Window(starts_at, ends_at).hours
    gpu_hours = node_count * gpu_model.gpus_per_node * hours
    if list_price is None:
        list_price = ListPrice.objects.filter(gpu_model=gpu_model, region=region).first()
    if list_price is None:
        raise PriceUnavailable(f"{gpu_model} has no price in {region.code}.")
    usage = f"{node_count} × {gpu_model.gpus_per_node} {gpu_model.name} × {hours} h"
    if quoted_price is not None:
        subtotal = money(gpu_hours * quoted_price)
        return Quote(
            currency=list_price.currency,
            price_per_gpu_hour=quoted_price,
            price_source="quote",
            gpu_hours=gpu_hours,
            subtotal=subtotal,
            discount=Decimal("0.00"),
            total=subtotal,
            lines=[
                QuoteLine(
                    f"{usage} at the quoted "
                    f"{format_money(quoted_price, list_price.currency, _places(quoted_price))}"
                    "/GPU-h",
                    subtotal,
                )
            ],
        )
    if rates is None:
        rates = negotiated_rates(organization, gpu_model)
    rate = pick_rate(rates, region, starts_at)
    if rate is not None:
        subtotal = money(gpu_hours * rate.price_per_gpu_hour)
        lines = [
            QuoteLine(
                f"{usage} at your rate of {rate.price_per_gpu_hour.normalize():f}/GPU-h", subtotal
            )
        ]
        return Quote(
            currency=list_price.currency,
            price_per_gpu_hour=rate.price_per_gpu_hour,
            price_source="negotiated",
            gpu_hours=gpu_hours,
            subtotal=subtotal,
            discount=Decimal("0.00"),
            total=subtotal,
            lines=lines,
        )
    unit = list_price.price_per_gpu_hour
    subtotal = money(gpu_hours * unit)
    lines = [QuoteLine(f"{usage} at {format_money(unit, list_price.currency)}/GPU-h", subtotal)]
    tiers = discounts if discounts is not None else list(DurationDiscount.objects.all())
    tier = max((t for t in tiers if hours >= t.min_hours), key=lambda t: t.min_hours, default=None)
    discount = Decimal("0.00")
    if tier is not None:
        discount = money(subtotal * tier.percent / 100)
        lines.append(QuoteLine(f"{tier.label} discount ({tier.percent.normalize():f}%)", -discount))
    return Quote(
        currency=list_price.currency,
        price_per_gpu_hour=unit,
        price_source="list",
        gpu_hours=gpu_hours,
        subtotal=subtotal,
        discount=discount,
        total=subtotal - discount,
        lines=lines,
    )


MAX_PRICE_PER_GPU_HOUR = Decimal("999999.9999")


def parse_price_per_gpu_hour(value: object) -> Decimal:
    """A price per GPU-hour typed by staff (a rate, a quote): a positive amount with at most
    4 decimal places (the column's precision), or a ServiceError naming the field."""
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ServiceError(
            "Give the price per GPU-hour as an amount, e.g. 1.85.", param="price_per_gpu_hour"
        ) from exc
    if not price.is_finite() or price <= 0:
        raise ServiceError(
            "The price per GPU-hour must be more than 0.", param="price_per_gpu_hour"
        )
    if price > MAX_PRICE_PER_GPU_HOUR or price != price.quantize(Decimal("0.0001")):
        raise ServiceError(
            "Give the price per GPU-hour with at most 4 decimal places, below 1,000,000.",
            param="price_per_gpu_hour",
        )
    return price


def quote_for_sale(
    *,
    organization: Organization | None,
    gpu_model: GpuModel,
    region: Region,
    node_count: int,
    starts_at: datetime,
    ends_at: datetime,
    quoted_price: Decimal | None = None,
) -> Quote:
    """`quote` for a block someone is buying: a pool without a list price is their error
    (nothing is sold there), not a lookup failure."""
    try:
        return quote(
            organization=organization,
            gpu_model=gpu_model,
            region=region,
            node_count=node_count,
            starts_at=starts_at,
            ends_at=ends_at,
            quoted_price=quoted_price,
        )
    except PriceUnavailable as exc:
        raise ServiceError(
            f"{gpu_model.name} is not sold in {region.name}.", param="region"
        ) from exc
