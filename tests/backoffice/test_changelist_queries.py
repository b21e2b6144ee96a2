"""Every admin change list costs the same number of queries with 5 rows as with 500.

The test walks the admin's registry, so a new change list is covered the day it is registered
(it fails until a builder below knows how to make its rows).
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import ApiKey, Invitation, Membership, Organization, User
from billing.models import (
    BillingAccount,
    FinanceFlag,
    Invoice,
    LedgerEntry,
    ModelPrice,
    Payment,
    Refund,
    SlaCredit,
    UsageHour,
    WebhookEvent,
    WebhookProcessing,
)
from capacity.models import (
    Allocation,
    Cluster,
    DurationDiscount,
    GpuModel,
    Incident,
    ListPrice,
    NegotiatedRate,
    Node,
    Region,
    Reservation,
)
from core.models import AuditEvent

from .conftest import make_staff, verified_client

pytestmark = pytest.mark.django_db
FEW, MANY = 5, 500
T0 = datetime(2027, 1, 4, tzinfo=UTC)
HOUR = timedelta(hours=1)


class World:
    """One of everything the rows point to."""

    def __init__(self) -> None:
        self.user = User.objects.create_user("world@example.com", "x" * 12)
        self.org = Organization.objects.create(
            name="World", slug="world", country="DE", billing_email="w@example.com"
        )
        self.gpu = GpuModel.objects.create(slug="h100", name="H100", memory_gb=80)
        self.region = Region.objects.create(code="eu", name="EU")
        self.cluster = Cluster.objects.create(code="eu-1", region=self.region, gpu_model=self.gpu)
        self.reservation = reservations(self, 1, 0)[0]
        self.payment = Payment.objects.create(
            organization=self.org,
            reservation=self.reservation,
            attempt_token="world",
            amount=Decimal("100.00"),
            currency="usd",
            status=Payment.Status.SUCCEEDED,
        )


def orgs(n: int, start: int) -> list[Organization]:
    return Organization.objects.bulk_create(
        Organization(
            name=f"Org {k}", slug=f"org-{k}", country="DE", billing_email=f"b{k}@example.com"
        )
        for k in range(start, start + n)
    )


def reservations(w: World, n: int, start: int) -> list[Reservation]:
    return Reservation.objects.bulk_create(
        Reservation(
            public_id=f"rsv_bulk{k:06d}",
            organization=w.org,
            gpu_model=w.gpu,
            region=w.region,
            cluster=w.cluster,
            node_count=1,
            starts_at=T0 + k * HOUR,
            ends_at=T0 + (k + 1) * HOUR,
            currency="usd",
            price_per_gpu_hour=Decimal("2.0000"),
            price_source="list",
            subtotal=Decimal("16.00"),
            discount=Decimal("0.00"),
            total=Decimal("16.00"),
        )
        for k in range(start, start + n)
    )


def nodes(w: World, n: int, start: int) -> list[Node]:
    return Node.objects.bulk_create(
        Node(cluster=w.cluster, hostname=f"bulk-n{k:05d}") for k in range(start, start + n)
    )


def gpus(n: int, start: int) -> list[GpuModel]:
    return GpuModel.objects.bulk_create(
        GpuModel(slug=f"gpu-{k}", name=f"GPU {k}", memory_gb=80) for k in range(start, start + n)
    )


def webhook_events(n: int, start: int) -> list[WebhookEvent]:
    return WebhookEvent.objects.bulk_create(
        WebhookEvent(stripe_event_id=f"evt_{k}", type="payment_intent.succeeded", payload={})
        for k in range(start, start + n)
    )


def access(model: type, n: int, start: int, **extra: object) -> list:
    return model.objects.bulk_create(
        model(
            user_agent="test",
            ip_address="127.0.0.1",
            username=f"u{k}@example.com",
            http_accept="*/*",
            path_info="/login/",
            attempt_time=T0,
            **extra,
        )
        for k in range(start, start + n)
    )


B = Callable[[World, int, int], object]
BUILDERS: dict[str, B] = {
    "accounts.user": lambda w, n, s: User.objects.bulk_create(
        User(email=f"bulk{k}@example.com") for k in range(s, s + n)
    ),
    "accounts.organization": lambda w, n, s: orgs(n, s),
    "accounts.invitation": lambda w, n, s: Invitation.objects.bulk_create(
        Invitation(
            organization=w.org,
            email=f"inv{k}@example.com",
            role="member",
            token_digest=f"{k:064d}",
            expires_at=T0,
            invited_by=w.user,
        )
        for k in range(s, s + n)
    ),
    "accounts.membership": lambda w, n, s: Membership.objects.bulk_create(
        Membership(user=u, organization=w.org, role="member")
        for u in BUILDERS["accounts.user"](w, n, s)
    ),
    "accounts.apikey": lambda w, n, s: ApiKey.objects.bulk_create(
        ApiKey(
            organization=w.org,
            created_by=w.user,
            name=f"key {k}",
            public_id=f"{k:012d}",
            digest=f"{k:064d}",
        )
        for k in range(s, s + n)
    ),
    "auth.group": lambda w, n, s: Group.objects.bulk_create(
        Group(name=f"group {k}") for k in range(s, s + n)
    ),
    "axes.accessattempt": lambda w, n, s: access(
        AccessAttempt, n, s, get_data="", post_data="", failures_since_start=1
    ),
    "axes.accesslog": lambda w, n, s: access(AccessLog, n, s),
    "axes.accessfailurelog": lambda w, n, s: access(AccessFailureLog, n, s),
    "otp_totp.totpdevice": lambda w, n, s: [
        TOTPDevice.objects.create(user=w.user, name=f"device {k}") for k in range(s, s + n)
    ],
    "capacity.gpumodel": lambda w, n, s: gpus(n, s),
    "capacity.region": lambda w, n, s: Region.objects.bulk_create(
        Region(code=f"r-{k}", name=f"Region {k}") for k in range(s, s + n)
    ),
    "capacity.cluster": lambda w, n, s: Cluster.objects.bulk_create(
        Cluster(code=f"c-{k}", region=w.region, gpu_model=w.gpu) for k in range(s, s + n)
    ),
    "capacity.node": lambda w, n, s: nodes(w, n, s),
    "capacity.listprice": lambda w, n, s: ListPrice.objects.bulk_create(
        ListPrice(gpu_model=g, region=w.region, price_per_gpu_hour=Decimal("2.00"))
        for g in gpus(n, s)
    ),
    "capacity.durationdiscount": lambda w, n, s: DurationDiscount.objects.bulk_create(
        DurationDiscount(min_hours=k + 1, percent=Decimal("5"), label=f"{k} h")
        for k in range(s, s + n)
    ),
    "capacity.negotiatedrate": lambda w, n, s: NegotiatedRate.objects.bulk_create(
        NegotiatedRate(
            organization=w.org,
            gpu_model=w.gpu,
            price_per_gpu_hour=Decimal("1.50"),
            valid_from=T0 + 2 * k * HOUR,
            valid_until=T0 + (2 * k + 1) * HOUR,
            created_by=w.user,
        )
        for k in range(s, s + n)
    ),
    "capacity.reservation": lambda w, n, s: reservations(w, n, s + 1),
    "capacity.allocation": lambda w, n, s: Allocation.objects.bulk_create(
        Allocation(
            reservation=w.reservation,
            node=node,
            cluster=w.cluster,
            starts_at=T0,
            ends_at=T0 + HOUR,
        )
        for node in nodes(w, n, s)
    ),
    "capacity.incident": lambda w, n, s: Incident.objects.bulk_create(
        Incident(kind="stuck", reservation=w.reservation, node=node, detail=f"stuck {node.pk}")
        for node in nodes(w, n, s)
    ),
    "billing.billingaccount": lambda w, n, s: BillingAccount.objects.bulk_create(
        BillingAccount(organization=o, stripe_customer_id=f"cus_{o.slug}") for o in orgs(n, s)
    ),
    "billing.payment": lambda w, n, s: Payment.objects.bulk_create(
        Payment(
            organization=w.org,
            reservation=w.reservation,
            attempt_token=f"t{k}",
            amount=Decimal("16.00"),
            currency="usd",
        )
        for k in range(s, s + n)
    ),
    # Every other refund pays back an SLA credit: its link costs no query.
    "billing.refund": lambda w, n, s: Refund.objects.bulk_create(
        Refund(
            payment=w.payment,
            amount=Decimal("0.10"),
            currency="usd",
            reason=f"r{k}",
            settles=f"sla:{k}" if k % 2 else "",
        )
        for k in range(s, s + n)
    ),
    "billing.slacredit": lambda w, n, s: SlaCredit.objects.bulk_create(
        SlaCredit(
            organization=w.org,
            reservation=w.reservation,
            cause="late_start",
            key=f"k{k}",
            minutes=60,
            node_hours=Decimal("1.0000"),
            percent=Decimal("100"),
            computed=Decimal("1.00"),
            amount=Decimal("1.00"),
            currency="usd",
            method="refund",
        )
        for k in range(s, s + n)
    ),
    "billing.invoice": lambda w, n, s: Invoice.objects.bulk_create(
        Invoice(organization=w.org, reservation=r, amount=r.total, currency="usd")
        for r in reservations(w, n, s + 1)
    ),
    "billing.ledgerentry": lambda w, n, s: LedgerEntry.objects.bulk_create(
        LedgerEntry(
            organization=w.org,
            kind="charge",
            amount=Decimal("1.00"),
            currency="usd",
            description=f"e{k}",
            reservation=w.reservation,
        )
        for k in range(s, s + n)
    ),
    "billing.webhookevent": lambda w, n, s: WebhookProcessing.objects.bulk_create(
        WebhookProcessing(event=e, status="processed") for e in webhook_events(n, s)
    ),
    "billing.webhookprocessing": lambda w, n, s: BUILDERS["billing.webhookevent"](w, n, s),
    "billing.financeflag": lambda w, n, s: FinanceFlag.objects.bulk_create(
        FinanceFlag(
            kind="reconciliation",
            organization=w.org,
            payment=w.payment,
            stripe_object_id=f"pi_{k}",
            detail="differs",
        )
        for k in range(s, s + n)
    ),
    "billing.modelprice": lambda w, n, s: ModelPrice.objects.bulk_create(
        ModelPrice(
            model=f"model-{k}",
            input_per_million=Decimal("1.00"),
            output_per_million=Decimal("2.00"),
        )
        for k in range(s, s + n)
    ),
    "billing.usagehour": lambda w, n, s: UsageHour.objects.bulk_create(
        UsageHour(organization=w.org, model="llama", hour=T0 + k * HOUR) for k in range(s, s + n)
    ),
    "core.auditevent": lambda w, n, s: AuditEvent.objects.bulk_create(
        AuditEvent(
            actor=w.user,
            actor_kind="customer",
            actor_email=w.user.email,
            organization=w.org,
            action="reservation.transition",
            object_type="capacity.reservation",
            object_id=str(w.reservation.pk),
            object_repr=w.reservation.public_id,
        )
        for _ in range(s, s + n)
    ),
}

REGISTERED = sorted(model._meta.label_lower for model in admin.site._registry)


def test_every_registered_change_list_has_a_builder():
    assert [label for label in REGISTERED if label not in BUILDERS] == []


@pytest.mark.parametrize("label", REGISTERED)
def test_change_list_queries_do_not_grow_with_rows(label):
    if label not in BUILDERS:
        pytest.fail(f"Add a builder for {label} to BUILDERS.")
    world = World()
    client = verified_client(make_staff(superuser=True))
    app_label, model = label.split(".")
    url = f"/admin/{app_label}/{model}/"
    BUILDERS[label](world, FEW, 0)
    assert client.get(url).status_code == 200  # warm caches (content types, sessions)
    with CaptureQueriesContext(connection) as few:
        response = client.get(url)
    assert response.status_code == 200
    shown_few = len(response.context["cl"].result_list)
    BUILDERS[label](world, MANY - FEW, FEW)
    with CaptureQueriesContext(connection) as many:
        response = client.get(url)
    shown_many = len(response.context["cl"].result_list)
    assert shown_many > shown_few  # the page really shows more rows
    assert len(many) == len(few), [q["sql"][:200] for q in many.captured_queries]
