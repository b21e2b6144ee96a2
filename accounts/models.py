from datetime import datetime
from decimal import Decimal
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django_countries.fields import CountryField

from core.money import NOT_TO_THE_CENT, validate_currency

from .permissions import Role


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **fields: object) -> "User":
        if not email:
            raise ValueError("An e-mail address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.full_clean(exclude=["password"])
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **fields: object) -> "User":
        fields.setdefault("is_staff", False)
        fields.setdefault("is_superuser", False)
        return self._create(email, password, **fields)

    def create_superuser(self, email: str, password: str | None = None, **fields: object) -> "User":
        fields.setdefault("is_staff", True)
        fields.setdefault("is_superuser", True)
        fields.setdefault("email_verified_at", timezone.now())
        return self._create(email, password, **fields)

    def get_by_natural_key(self, username: str | None) -> "User":
        return self.get(email__iexact=username)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. The e-mail address is the login and is stored lower-cased."""

    email = models.EmailField("e-mail address", max_length=254, unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="Staff can sign in to the back office.")
    date_joined = models.DateTimeField(default=timezone.now)
    email_verified_at = models.DateTimeField(null=True, blank=True)
    # The identity a service key acts as (see ApiKey.Kind.SERVICE): no password, never signs in,
    # not listed on the team page.
    is_service = models.BooleanField(default=False, editable=False)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]
        # The back office's user list filters on these.
        indexes = [
            models.Index(fields=["is_staff"]),
            models.Index(fields=["is_superuser"]),
            models.Index(fields=["is_active"]),
        ]

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        super().clean()
        self.email = self.__class__.objects.normalize_email(self.email).lower()

    def set_password(self, raw_password: str | None) -> None:
        # A service key's identity never signs in, whoever sets a password (the admin form).
        super().set_password(None if self.is_service else raw_password)

    @property
    def is_verified(self) -> bool:
        return self.email_verified_at is not None

    @property
    def display_name(self) -> str:
        return self.full_name or self.email

    def get_full_name(self) -> str:
        return self.display_name

    def get_short_name(self) -> str:
        return self.full_name.split(" ")[0] if self.full_name else self.email


class Organization(models.Model):
    """A customer: the tenant every piece of customer data belongs to."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    class Tier(models.TextChoices):
        SELF_SERVE = "self_serve", "Self-serve"
        ENTERPRISE = "enterprise", "Enterprise"

    class PaymentTerms(models.TextChoices):
        CARD = "card", "Card, paid upfront"
        INVOICE = "invoice", "Invoice"

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=40, unique=True)
    legal_name = models.CharField(max_length=200, blank=True)
    country = CountryField()
    billing_email = models.EmailField()
    tax_id = models.CharField("tax ID", max_length=40, blank=True)
    address = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    suspended_reason = models.TextField(blank=True)
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.SELF_SERVE)
    payment_terms = models.CharField(
        max_length=16, choices=PaymentTerms.choices, default=PaymentTerms.CARD
    )
    payment_days = models.PositiveSmallIntegerField(
        default=30, help_text="Days to pay an invoice (net-N) under invoice terms."
    )
    credit_limit = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        default=Decimal("0.00"),
        validators=[MinValueValidator(Decimal("0.00"))],
    )
    # Prices, credit limits and invoices are in this currency, kept to the cent.
    currency = models.CharField(max_length=3, default="usd", validators=[validate_currency])
    account_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_accounts",
        limit_choices_to={"is_staff": True},
        help_text="The salesperson who looks after this customer.",
    )
    is_platform = models.BooleanField(
        default=False,
        help_text="Our own services (the model gateway): its usage keys report for customers.",
    )
    # Sales raises the tier's capacity limits (settings.CAPACITY_LIMITS) for one customer;
    # blank keeps the tier's. capacity/limits.py enforces them.
    max_open_holds = models.PositiveIntegerField(
        "open holds limit",
        null=True,
        blank=True,
        help_text="Reservations and extensions waiting for payment at once. Blank: the tier's.",
    )
    max_held_node_hours = models.PositiveIntegerField(
        "held node-hours limit",
        null=True,
        blank=True,
        help_text="Node-hours in those holds together. Blank: the tier's.",
    )
    max_live_nodes = models.PositiveIntegerField(
        "live nodes limit",
        null=True,
        blank=True,
        help_text="Nodes in reservations held, scheduled, provisioning or active. Blank: the "
        "tier's.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Sales looks at every new customer once; until then it waits on the back-office dashboard.
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        limit_choices_to={"is_staff": True},
    )

    class Meta:
        ordering = ["name"]
        permissions = [
            ("approve_terms", "Can approve invoice terms and credit limits"),
            ("suspend_organization", "Can suspend and reactivate organizations"),
            ("review_organization", "Can mark new organizations reviewed"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(credit_limit__gte=0), name="accounts_org_credit_limit_gte_0"
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "suspended"]),
                name="accounts_org_status_valid",
            ),
            models.CheckConstraint(
                condition=~models.Q(currency__in=sorted(NOT_TO_THE_CENT)),
                name="accounts_org_currency_to_the_cent",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "tier"]),
            models.Index(fields=["country"]),
            models.Index(fields=["created_at"]),
            models.Index(fields=["reviewed_at", "created_at"]),
            models.Index(fields=["payment_terms"]),
            # On PostgreSQL, migration 0005 adds UPPER(...) pattern indexes for the back
            # office's prefix search on name, slug, legal name and billing e-mail.
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def on_invoice_terms(self) -> bool:
        return self.payment_terms == self.PaymentTerms.INVOICE

    @property
    def payment_terms_text(self) -> str:
        """The terms as customers read them: Card, paid upfront, or Invoice, net 30."""
        if self.on_invoice_terms:
            return f"Invoice, net {self.payment_days}"
        return self.get_payment_terms_display()


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "organization"], name="accounts_membership_user_org_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="accounts_membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.organization_id} as {self.role}"


class Invitation(models.Model):
    """An e-mailed, expiring, single-use invitation to join an organization with a role.

    Only a SHA-256 digest of the token is stored; the token itself is in the e-mail.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_digest = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # At most one open invitation per address and organization.
            models.UniqueConstraint(
                "organization",
                Lower("email"),
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="accounts_invitation_one_open_per_email",
            ),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="accounts_invitation_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Invitation of {self.email} to {self.organization_id}"

    @property
    def is_open(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or timezone.now()) >= self.expires_at


class ApiKey(models.Model):
    """A key for the API, made by a member for an organization (see accounts/api_keys/format.py).

    A personal key acts for the member who made it and lives only while that member is active,
    in the organization, in a role that covers its scopes. A service key belongs to the
    organization: it acts as its own service identity (`service_user`, shared with the keys it
    is rotated into) and ends only when revoked.
    """

    class Kind(models.TextChoices):
        PERSONAL = "personal", "Personal"
        SERVICE = "service", "Service"

    class Scope(models.TextChoices):
        RESERVATIONS_READ = "reservations:read", "Read reservations and offerings"
        RESERVATIONS_WRITE = "reservations:write", "Reserve, extend, cancel and pay"
        BILLING_READ = "billing:read", "Read payments, refunds and invoices"
        USAGE_WRITE = "usage:write", "Report token usage (model gateway)"
        INFERENCE = "inference", "Call hosted models"
        KEYS_READ = "keys:read", "List the organization's API keys"
        KEYS_WRITE = "keys:write", "Revoke API keys"

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_keys"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PERSONAL)
    service_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="service_keys",
    )
    name = models.CharField(max_length=80)
    public_id = models.CharField(max_length=12, unique=True)
    digest = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # A rotated key keeps working until then, so deployments can switch over.
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"]),
            models.Index(fields=["created_by", "organization"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind="personal", service_user__isnull=True)
                | models.Q(kind="service", service_user__isnull=False),
                name="accounts_apikey_service_user_iff_service",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} (hbk_{self.public_id}_…)"

    def is_usable(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or self.expires_at > now

    @property
    def is_service(self) -> bool:
        return self.kind == self.Kind.SERVICE
