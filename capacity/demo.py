"""The demo catalog and inventory `seed_demo` loads: 3 regions, 3 GPU models, 288 nodes."""

import random
from datetime import timedelta
from decimal import Decimal

from django.test.utils import override_settings
from django.utils import timezone

from accounts.models import Membership, Organization, User
from accounts.permissions import Role

from . import services
from .models import Cluster, DurationDiscount, GpuModel, ListPrice, Node, Region, Reservation
from .windows import Window, ceil_hour

REGIONS = [
    ("us-east-1", "US East", "Ashburn, Virginia"),
    ("us-west-2", "US West", "Hillsboro, Oregon"),
    ("eu-north-1", "EU North", "Stockholm, Sweden"),
]
GPU_MODELS = [
    ("h100-sxm", "H100 SXM 80 GB", 80, "NVIDIA Hopper, NVLink 900 GB/s", Decimal("2.49")),
    ("h200", "H200 141 GB", 141, "NVIDIA Hopper, HBM3e", Decimal("3.29")),
    ("b200", "B200 192 GB", 192, "NVIDIA Blackwell, NVLink 5", Decimal("4.99")),
]
REGION_PRICE_FACTOR = {
    "us-east-1": Decimal("1.00"),
    "us-west-2": Decimal("0.96"),
    "eu-north-1": Decimal("1.04"),
}
DISCOUNTS = [
    (168, Decimal("5"), "7+ days"),
    (720, Decimal("12"), "30+ days"),
    (2160, Decimal("20"), "90+ days"),
]
CLUSTERS_PER_POOL = 2
NODES_PER_CLUSTER = 16
NORTHWIND_USER = "ml-platform@northwind.example"
BOOKINGS_PER_POOL = 10  # Northwind's tries per GPU model and region (some sell out)


def load_catalog() -> int:
    """Create or refresh the catalog and inventory; returns the number of nodes."""
    for min_hours, percent, label in DISCOUNTS:
        DurationDiscount.objects.update_or_create(
            min_hours=min_hours, defaults={"percent": percent, "label": label}
        )
    for order, (slug, name, memory, description, price) in enumerate(GPU_MODELS):
        gpu, _ = GpuModel.objects.update_or_create(
            slug=slug,
            defaults={
                "name": name,
                "memory_gb": memory,
                "description": description,
                "sort_order": order,
            },
        )
        for code, region_name, location in REGIONS:
            region, _ = Region.objects.update_or_create(
                code=code, defaults={"name": region_name, "location": location}
            )
            ListPrice.objects.update_or_create(
                gpu_model=gpu,
                region=region,
                defaults={
                    "price_per_gpu_hour": (price * REGION_PRICE_FACTOR[code]).quantize(
                        Decimal("0.01")
                    )
                },
            )
            for index in range(1, CLUSTERS_PER_POOL + 1):
                cluster, _ = Cluster.objects.get_or_create(
                    code=f"{code}-{slug}-{index}", defaults={"region": region, "gpu_model": gpu}
                )
                for number in range(1, NODES_PER_CLUSTER + 1):
                    Node.objects.get_or_create(
                        hostname=f"{cluster.code}-n{number:03d}", defaults={"cluster": cluster}
                    )
    return Node.objects.count()


def northwind_ensure(password: str) -> Organization:
    """The other customer, Northwind AI, and its one user (signs in with the demo password)."""
    org, _ = Organization.objects.get_or_create(
        slug="northwind",
        defaults={
            "name": "Northwind AI",
            "country": "SE",
            "billing_email": "ap@northwind.example",
            "tier": Organization.Tier.ENTERPRISE,
        },
    )
    user = User.objects.filter(email=NORTHWIND_USER).first()
    if user is None:
        user = User.objects.create_user(NORTHWIND_USER, password, full_name="Northwind Platform")
    if user.email_verified_at is None:
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
    Membership.objects.get_or_create(user=user, organization=org, defaults={"role": Role.OWNER})
    return org


def load_bookings(password: str) -> int:
    """Northwind AI's bookings, so availability looks like a real, busy cloud; made once.

    On invoice terms (seed_demo approves them when Stripe can issue invoices) each booking is
    confirmed at once and billing invoices it through the settlement hook, as for any customer.
    Otherwise nobody pays for them: they are confirmed without a payment."""
    org = northwind_ensure(password)
    if org.reservations.exists():
        return 0
    user = User.objects.get(email=NORTHWIND_USER)
    # The busy customer books a season in seconds, far past any one customer's limits and hold
    # rate (capacity/limits.py): those are for real customers, not for the demo's picture.
    with override_settings(CAPACITY_LIMITS={}, CAPACITY_HOLD_RATE_PER_MINUTE=None):
        return _book(org, user)


def _book(org: Organization, user: User) -> int:
    rng = random.Random(7)  # the same picture every time
    start = ceil_hour(timezone.now()) + timedelta(hours=2)
    made = 0
    for gpu in GpuModel.objects.all():
        for region in Region.objects.all():
            for _ in range(BOOKINGS_PER_POOL):
                begin = start + timedelta(hours=rng.randrange(0, 24 * 50))
                window = Window(begin, begin + timedelta(hours=rng.choice([24, 48, 72, 168, 336])))
                try:
                    held = services.reservation_create(
                        organization=org,
                        user=user,
                        gpu_model=gpu,
                        region=region,
                        node_count=rng.choice([2, 4, 8, 12]),
                        window=window,
                    )
                except services.SoldOut:
                    continue
                if held.state == Reservation.State.HELD:  # card terms: nobody will pay
                    services.reservation_confirm(
                        reservation=held, actor=None, reason="Demo booking.", notify=False
                    )
                made += 1
    return made
