from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.ids import public_id
from core.money import NOT_TO_THE_CENT, validate_currency

from .windows import Window

# Money the database stores as an amount (a price, a total, what is due back) is never below 0;
# only the ledger's entries carry a sign.
NOT_NEGATIVE = MinValueValidator(Decimal("0"))


class GpuModel(models.Model):
    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    memory_gb = models.PositiveSmallIntegerField()
    gpus_per_node = models.PositiveSmallIntegerField(default=8)
    description = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "name"]

    def __str__(self) -> str:
        return self.name


class Region(models.Model):
    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    location = models.CharField(max_length=80, blank=True)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]
        indexes = [models.Index(fields=["is_active"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class Cluster(models.Model):
    """One GPU model on one fabric: every node of a reservation comes from a single cluster."""

    code = models.SlugField(max_length=60, unique=True)
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="clusters")
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="clusters")
    fabric = models.CharField(max_length=80, default="InfiniBand NDR 400 Gb/s")
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]
        indexes = [models.Index(fields=["gpu_model", "region"]), models.Index(fields=["is_active"])]

    def __str__(self) -> str:
        return self.code


class Node(models.Model):
    class Status(models.TextChoices):
        AVAILABLE = "available", "Available"
        MAINTENANCE = "maintenance", "Maintenance"
        RETIRED = "retired", "Retired"

    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="nodes")
    hostname = models.CharField(max_length=80, unique=True)
    gpu_count = models.PositiveSmallIntegerField(default=8)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.AVAILABLE)
    status_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["hostname"]
        indexes = [models.Index(fields=["cluster", "status"]), models.Index(fields=["status"])]
        permissions = [("drain_node", "Can drain nodes into maintenance and bring them back")]

    def __str__(self) -> str:
        return self.hostname


class ListPrice(models.Model):
    """The public price of one GPU-hour of a GPU model in a region."""

    gpu_model = models.ForeignKey(GpuModel, on_delete=models.CASCADE, related_name="prices")
    region = models.ForeignKey(Region, on_delete=models.CASCADE, related_name="prices")
    price_per_gpu_hour = models.DecimalField(
        max_digits=10, decimal_places=4, validators=[MinValueValidator(Decimal("0.0001"))]
    )
    currency = models.CharField(max_length=3, default="usd", validators=[validate_currency])

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["gpu_model", "region"], name="capacity_listprice_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(price_per_gpu_hour__gt=0), name="capacity_listprice_positive"
            ),
            # Reservations take their currency from here; it must count in cents.
            models.CheckConstraint(
                condition=~models.Q(currency__in=sorted(NOT_TO_THE_CENT)),
                name="capacity_listprice_currency_to_the_cent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.gpu_model} in {self.region.code}: {self.price_per_gpu_hour}/GPU-h"


class DurationDiscount(models.Model):
    """A discount on list prices for reservations of at least `min_hours`."""

    min_hours = models.PositiveIntegerField(unique=True)
    percent = models.DecimalField(max_digits=5, decimal_places=2)
    label = models.CharField(max_length=60)

    class Meta:
        ordering = ["min_hours"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(percent__gt=0, percent__lt=100),
                name="capacity_discount_percent_range",
            )
        ]

    def __str__(self) -> str:
        return f"{self.label}: {self.percent}%"


class NegotiatedRate(models.Model):
    """A price agreed by sales with one organization for reservations starting in a window."""

    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.CASCADE, related_name="negotiated_rates"
    )
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.CASCADE, related_name="+")
    region = models.ForeignKey(
        Region,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="Empty means every region.",
    )
    price_per_gpu_hour = models.DecimalField(
        max_digits=10, decimal_places=4, validators=[MinValueValidator(Decimal("0.0001"))]
    )
    valid_from = models.DateTimeField()
    valid_until = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-valid_from"]
        indexes = [models.Index(fields=["organization", "gpu_model", "valid_from"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(valid_until__gt=models.F("valid_from")),
                name="capacity_rate_window_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(price_per_gpu_hour__gt=0), name="capacity_rate_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization} · {self.gpu_model}: {self.price_per_gpu_hour}/GPU-h"


def new_public_id() -> str:
    return public_id("rsv_")


class Reservation(models.Model):
    class State(models.TextChoices):
        HELD = "held", "Held"
        SCHEDULED = "scheduled", "Scheduled"
        PROVISIONING = "provisioning", "Provisioning"
        ACTIVE = "active", "Active"
        RELEASING = "releasing", "Releasing"
        COMPLETED = "completed", "Completed"
        EXPIRED = "expired", "Expired"
        CANCELED = "canceled", "Canceled"
        FAILED = "failed", "Failed"

    public_id = models.CharField(max_length=24, unique=True, default=new_public_id, editable=False)
    organization = models.ForeignKey(
        "accounts.Organization", on_delete=models.PROTECT, related_name="reservations"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="+")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="+")
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="reservations")
    node_count = models.PositiveSmallIntegerField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    starts_on_payment = models.BooleanField(
        default=False, help_text="Booked to start now: provisioned as soon as it is paid."
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.HELD)
    hold_expires_at = models.DateTimeField(null=True, blank=True)
    # Price snapshot taken when the reservation was made (and grown by extensions).
    currency = models.CharField(max_length=3)
    price_per_gpu_hour = models.DecimalField(
        max_digits=10, decimal_places=4, validators=[NOT_NEGATIVE]
    )
    price_source = models.CharField(max_length=16)
    subtotal = models.DecimalField(max_digits=14, decimal_places=2, validators=[NOT_NEGATIVE])
    discount = models.DecimalField(max_digits=14, decimal_places=2, validators=[NOT_NEGATIVE])
    total = models.DecimalField(max_digits=14, decimal_places=2, validators=[NOT_NEGATIVE])
    price_lines = models.JSONField(default=list)
    # Cancellation: what the policy allows back; the payment side refunds it.
    refund_due = models.DecimalField(
        max_digits=14, decimal_places=2, null=True, blank=True, validators=[NOT_NEGATIVE]
    )
    # A form's one-time token: a stale form submitted twice finds the first reservation.
    request_token = models.CharField(max_length=64, blank=True, default="", editable=False)
    # Provisioning: how the customer reaches the block. The secret part (a kubeconfig with its
    # token) is encrypted at rest, so it can be downloaded again during the block.
    access_details = models.JSONField(default=dict, blank=True)
    access_secret = models.TextField(blank=True, help_text="Encrypted (core.crypto).")
    reminders_sent = models.JSONField(default=list, blank=True)
    # A quote: made by sales on the customer's behalf, held at the price sales set.
    quoted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    quote_note = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"]),
            models.Index(fields=["state", "hold_expires_at"]),
            models.Index(fields=["state", "starts_at"]),
            models.Index(fields=["starts_at"]),
            models.Index(fields=["created_at"]),
        ]
        permissions = [
            ("create_quote", "Can make quotes (held reservations) for customers"),
            ("operate_reservation", "Can cancel, extend, retry and release any reservation"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")),
                name="capacity_reservation_window_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(node_count__gte=1), name="capacity_reservation_nodes_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(
                    state__in=[
                        "held",
                        "scheduled",
                        "provisioning",
                        "active",
                        "releasing",
                        "completed",
                        "expired",
                        "canceled",
                        "failed",
                    ]
                ),
                name="capacity_reservation_state_valid",
            ),
            models.UniqueConstraint(
                fields=["organization", "request_token"],
                condition=~models.Q(request_token=""),
                name="capacity_reservation_request_token_unique",
            ),
            # The price snapshot: amounts, never signs (the ledger is the signed record).
            models.CheckConstraint(
                condition=models.Q(
                    price_per_gpu_hour__gte=0, subtotal__gte=0, discount__gte=0, total__gte=0
                ),
                name="capacity_reservation_money_not_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(refund_due__isnull=True) | models.Q(refund_due__gte=0),
                name="capacity_reservation_refund_due_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def duration_hours(self) -> int:
        return Window(self.starts_at, self.ends_at).hours

    @property
    def gpu_count(self) -> int:
        return self.node_count * self.gpu_model.gpus_per_node


def new_extension_id() -> str:
    return public_id("ext_")


class Extension(models.Model):
    """More hours for a scheduled or active reservation: quoted, held, paid, then applied.

    Its allocations hold the extra hours on the reservation's nodes while the customer pays
    (a hold's expiry rules); the reservation's end and price move only once the money is
    secured (`paid`) or staff grant the hours (`complimentary`). See capacity/extensions.py.
    """

    class State(models.TextChoices):
        HELD = "held", "Awaiting payment"
        PAID = "paid", "Paid and applied"
        LAPSED = "lapsed", "Lapsed (not paid in time)"
        COMPLIMENTARY = "complimentary", "Complimentary"
        CANCELED = "canceled", "Canceled"

    public_id = models.CharField(
        max_length=24, unique=True, default=new_extension_id, editable=False
    )
    reservation = models.ForeignKey(
        Reservation, on_delete=models.PROTECT, related_name="extensions"
    )
    hours = models.PositiveIntegerField()
    starts_at = models.DateTimeField(help_text="The reservation's end when it was asked for.")
    ends_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.HELD)
    hold_expires_at = models.DateTimeField(null=True, blank=True)
    currency = models.CharField(max_length=3)
    subtotal = models.DecimalField(max_digits=14, decimal_places=2, validators=[NOT_NEGATIVE])
    discount = models.DecimalField(max_digits=14, decimal_places=2, validators=[NOT_NEGATIVE])
    price = models.DecimalField(max_digits=14, decimal_places=2, validators=[NOT_NEGATIVE])
    price_lines = models.JSONField(default=list)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField(blank=True, help_text="Why staff granted it (complimentary).")
    # The client's token: the same request again (a double click, a retried API call) finds
    # this extension instead of asking for another.
    request_token = models.CharField(max_length=64, blank=True, default="", editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    applied_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "hold_expires_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")),
                name="capacity_extension_window_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(hours__gte=1), name="capacity_extension_hours_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(price__gte=0), name="capacity_extension_price_not_negative"
            ),
            models.CheckConstraint(
                condition=models.Q(subtotal__gte=0, discount__gte=0),
                name="capacity_extension_money_not_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(
                    state__in=["held", "paid", "lapsed", "complimentary", "canceled"]
                ),
                name="capacity_extension_state_valid",
            ),
            # One extension waits for payment at a time: a second one would hold hours that
            # depend on the first being paid.
            models.UniqueConstraint(
                fields=["reservation"],
                condition=models.Q(state="held"),
                name="capacity_extension_one_held_per_reservation",
            ),
            models.UniqueConstraint(
                fields=["reservation", "request_token"],
                condition=~models.Q(request_token=""),
                name="capacity_extension_request_token_unique",
            ),
        ]

    def __str__(self) -> str:
        return self.public_id


class Allocation(models.Model):
    """One node held by one reservation for [starts_at, ends_at).

    Live while `released_at` is empty. On PostgreSQL an exclusion constraint (migration 0002)
    forbids two live allocations of a node whose periods overlap.
    """

    reservation = models.ForeignKey(
        Reservation, on_delete=models.CASCADE, related_name="allocations"
    )
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="allocations")
    # Set on the hours an extension holds while it is paid for; once paid they are released
    # and the reservation's own allocations run on to the new end.
    extension = models.ForeignKey(
        Extension, null=True, blank=True, on_delete=models.CASCADE, related_name="allocations"
    )
    # Copied from the node so availability can be read per cluster from one index.
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="+")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["node", "starts_at", "ends_at"],
                condition=models.Q(released_at__isnull=True),
                name="capacity_alloc_live_node",
            ),
            # Two orders, so a window near now (few blocks started before its end) and a window
            # far out (few blocks end after its start) both read a short range.
            models.Index(
                fields=["cluster", "ends_at", "starts_at"],
                condition=models.Q(released_at__isnull=True),
                name="capacity_alloc_live_cluster",
            ),
            models.Index(
                fields=["cluster", "starts_at", "ends_at"],
                condition=models.Q(released_at__isnull=True),
                name="capacity_alloc_live_clus_start",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")),
                name="capacity_allocation_period_valid",
            ),
            models.UniqueConstraint(
                fields=["reservation", "node"],
                condition=models.Q(extension__isnull=True),
                name="capacity_allocation_node_once",
            ),
            models.UniqueConstraint(
                fields=["extension", "node"],
                condition=models.Q(extension__isnull=False),
                name="capacity_allocation_extension_node_once",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.node_id} for {self.reservation_id}"


class Incident(models.Model):
    """Something operations must look at: a failed provisioning, an unhealthy node."""

    class Kind(models.TextChoices):
        PROVISIONING_FAILED = "provisioning_failed", "Provisioning failed"
        NODE_UNHEALTHY = "node_unhealthy", "Node unhealthy"
        NODE_SWAPPED = "node_swapped", "Node swapped"
        STUCK = "stuck", "Reservation stuck"
        PROVISIONING_DELAYED = "provisioning_delayed", "Provisioning delayed"
        TEARDOWN_FAILED = "teardown_failed", "Teardown failed"
        SYNC_FAILED = "sync_failed", "Backend out of sync"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    reservation = models.ForeignKey(
        Reservation, null=True, blank=True, on_delete=models.PROTECT, related_name="incidents"
    )
    node = models.ForeignKey(
        Node, null=True, blank=True, on_delete=models.PROTECT, related_name="incidents"
    )
    detail = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["kind", "resolved_at"])]
        constraints = [
            # One open incident per kind and object: what it is about is the reservation, the
            # node, or the pair (no object counts as one object too).
            models.UniqueConstraint(
                "kind",
                Coalesce("reservation", 0),
                Coalesce("node", 0),
                condition=models.Q(resolved_at__isnull=True),
                name="one_open_incident_per_kind_and_object",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.detail[:60]}"


class SimulatedCall(models.Model):
    """The simulated data center's memory of one driver call, by its idempotency key.

    Kept in the database so it outlives the worker process that made the call: a call
    repeated after a crash finds what the first one did."""

    key = models.CharField(max_length=120, unique=True)
    nodes = models.JSONField(default=list)
    attempts = models.PositiveIntegerField(default=0)
    completions = models.PositiveIntegerField(default=0)
    result = models.JSONField(default=dict, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.key


class SimulatedCluster(models.Model):
    """A cluster in the simulated data center: the certificate authority its API servers' TLS
    certificates chain to, the same for every block on the cluster."""

    name = models.CharField(max_length=80, unique=True)
    ca_certificate = models.TextField(help_text="PEM; public, as in every kubeconfig.")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class SimulatedNode(models.Model):
    """A node in the simulated data center: what runs on it, and whether it is healthy."""

    hostname = models.CharField(max_length=80, unique=True)
    block = models.CharField(max_length=120, blank=True)
    fault = models.CharField(max_length=200, blank=True, help_text="Empty when healthy.")

    def __str__(self) -> str:
        return self.hostname
