"""Organizations: a customer creates and edits its own; staff decide its details, terms,
suspension and review."""

from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from core import audit
from core.dates import format_date
from core.errors import Conflict, ServiceError
from core.staff import reason_clean, require_staff_permission

from .. import selectors
from ..api_keys.authentication import api_key_cache_forget
from ..guards import require_permission
from ..models import Membership, Organization, User
from ..permissions import Permission, Role
from ..validators import validate_org_slug


def validate_new_slug(slug: str) -> None:
    try:
        validate_org_slug(slug)
    except ValidationError as exc:
        raise ServiceError(exc.messages[0], code=exc.code, param="slug") from exc
    if selectors.slug_taken(slug):
        raise Conflict("This address is taken; choose another.", code="slug_taken", param="slug")


@transaction.atomic
def organization_create(
    *, owner: User, name: str, slug: str, country: str, billing_email: str
) -> Organization:
    validate_new_slug(slug)
    organization = Organization(
        name=name.strip(), slug=slug, country=country, billing_email=billing_email.lower()
    )
    try:
        organization.full_clean()
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise ServiceError(messages[0], code="invalid", param=field) from exc
    try:
        with transaction.atomic():
            organization.save()
    except IntegrityError as exc:
        raise Conflict(
            "This address is taken; choose another.", code="slug_taken", param="slug"
        ) from exc
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    audit.record(
        action="organization.created", actor=owner, organization=organization, target=organization
    )
    return organization


@transaction.atomic
def organization_update(*, organization: Organization, actor: User, **fields: str) -> Organization:
    require_permission(
        actor=actor, organization=organization, permission=Permission.MANAGE_ORGANIZATION
    )
    editable = {"name", "legal_name", "country", "billing_email", "tax_id", "address"}
    unknown = set(fields) - editable
    if unknown:
        raise ServiceError(f"These fields cannot be changed here: {', '.join(sorted(unknown))}.")
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    before = {name: str(getattr(organization, name)) for name in fields}
    for name, value in fields.items():
        setattr(organization, name, value)
    try:
        organization.full_clean()
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise ServiceError(messages[0], param=field) from exc
    organization.save(update_fields=list(fields))
    changes = {
        name: [before[name], str(getattr(organization, name))]
        for name in fields
        if before[name] != str(getattr(organization, name))
    }
    if changes:
        audit.record(
            action="organization.updated",
            actor=actor,
            organization=organization,
            target=organization,
            data={"changes": changes},
        )
    return organization


# --- Back office: staff decisions about an organization ---------------------------------------
# Staff act through Django permissions (granted to the staff groups in backoffice/roles.py),
# not through a membership. Every decision is audited with its reason.


STAFF_EDITABLE = frozenset(
    {"name", "legal_name", "country", "billing_email", "tax_id", "address", "tier", "account_owner"}
)


def organization_lock(organization: Organization) -> Organization:
    """The organization's row, locked until the transaction ends: the one lock that serializes
    changes to its terms, status and negotiated rates, and the holds it places.

    FOR NO KEY UPDATE, not FOR UPDATE: rows that merely point at the organization (an audit
    event, a payment, a reservation) take a key-share lock on it as they are written, which FOR
    UPDATE would make wait for whoever holds this lock while that one waits for their pool or
    reservation: a deadlock. Lockers of the organization still take turns. Call inside a
    transaction."""
    return Organization.objects.select_for_update(no_key=True, of=("self",)).get(pk=organization.pk)


def _clean_reason(reason: str, *, required: bool) -> str:
    return reason_clean(
        reason, required=required, missing="Give a reason: the customer and the audit log see it."
    )


@transaction.atomic
def organization_staff_update(
    *, organization: Organization, actor: User, changes: dict[str, object]
) -> Organization:
    """Sales edits a customer's details, tier and account owner (the admin's change form).

    Terms, credit limit and status are not editable here: they have their own services.
    """
    require_staff_permission(actor, "accounts.change_organization", "change organizations")
    unknown = set(changes) - STAFF_EDITABLE
    if unknown:
        raise ServiceError(f"These fields cannot be changed here: {', '.join(sorted(unknown))}.")
    locked = organization_lock(organization)
    before = {name: getattr(locked, name) for name in changes}
    for name, value in changes.items():
        setattr(locked, name, value)
    if locked.account_owner is not None and not locked.account_owner.is_staff:
        raise ServiceError("The account owner must be a staff member.", param="account_owner")
    try:
        locked.full_clean()
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise ServiceError(messages[0], param=field) from exc
    diff = {
        name: [str(before[name] or ""), str(getattr(locked, name) or "")]
        for name in changes
        if before[name] != getattr(locked, name)
    }
    if diff:
        locked.save(update_fields=sorted(changes))
        audit.record(
            action="organization.updated",
            actor=actor,
            organization=locked,
            target=locked,
            data={"changes": diff},
        )
    return locked


PAYMENT_DAYS_RANGE = (1, 120)


def organization_terms_write(
    *,
    organization: Organization,
    actor: User,
    payment_terms: str,
    payment_days: int,
    credit_limit: object,
    reason: str = "",
) -> Organization:
    """Write an organization's payment terms. `organization` must be locked by the caller
    (billing.services.terms, which checks the credit limit against the balance under that lock)."""
    require_staff_permission(actor, "accounts.approve_terms", "approve payment terms")
    if payment_terms not in Organization.PaymentTerms.values:
        raise ServiceError("Choose card or invoice terms.", param="payment_terms")
    if (
        not isinstance(payment_days, int)
        or isinstance(payment_days, bool)
        or not PAYMENT_DAYS_RANGE[0] <= payment_days <= PAYMENT_DAYS_RANGE[1]
    ):
        raise ServiceError(
            f"Give the payment days as a whole number from {PAYMENT_DAYS_RANGE[0]} to "
            f"{PAYMENT_DAYS_RANGE[1]}.",
            param="payment_days",
        )
    try:
        limit = Decimal(str(credit_limit))
    except InvalidOperation as exc:
        raise ServiceError("Give the credit limit as an amount.", param="credit_limit") from exc
    if not limit.is_finite() or limit < 0 or limit != limit.quantize(Decimal("0.01")):
        raise ServiceError(
            "Give the credit limit as an amount of at least 0.00, in cents.", param="credit_limit"
        )
    if limit >= Decimal("1e12"):
        raise ServiceError("That credit limit is too large.", param="credit_limit")
    reason = _clean_reason(reason, required=False)
    before = {
        "payment_terms": organization.payment_terms,
        "payment_days": organization.payment_days,
        "credit_limit": str(organization.credit_limit),
    }
    organization.payment_terms = payment_terms
    organization.payment_days = payment_days
    organization.credit_limit = limit
    after = {
        "payment_terms": payment_terms,
        "payment_days": payment_days,
        "credit_limit": str(limit),
    }
    if before == after:
        raise Conflict(
            f"{organization.name} already has these terms; nothing changed.", code="unchanged"
        )
    organization.save(update_fields=["payment_terms", "payment_days", "credit_limit"])
    audit.record(
        action="organization.terms_changed",
        actor=actor,
        organization=organization,
        target=organization,
        data={"from": before, "to": after},
        reason=reason,
    )
    return organization


@transaction.atomic
def organization_suspend(*, organization: Organization, actor: User, reason: str) -> Organization:
    """Suspend: the organization can no longer reserve, pay or use its API keys, and its
    members see `reason` on every page. Cached API keys are dropped after the commit so the
    suspension reaches the API at once rather than within the key cache's few seconds."""
    require_staff_permission(
        actor, "accounts.suspend_organization", "suspend or reactivate organizations"
    )
    reason = _clean_reason(reason, required=True)
    locked = organization_lock(organization)
    if not locked.is_active:
        raise Conflict(f"{locked.name} is already suspended.", code="already_suspended")
    locked.status = Organization.Status.SUSPENDED
    locked.suspended_reason = reason
    locked.save(update_fields=["status", "suspended_reason"])
    audit.record(
        action="organization.suspended",
        actor=actor,
        organization=locked,
        target=locked,
        reason=reason,
    )
    _forget_cached_keys_after_commit(locked)
    return locked


@transaction.atomic
def organization_reactivate(
    *, organization: Organization, actor: User, reason: str = ""
) -> Organization:
    require_staff_permission(
        actor, "accounts.suspend_organization", "suspend or reactivate organizations"
    )
    reason = _clean_reason(reason, required=False)
    locked = organization_lock(organization)
    if locked.is_active:
        raise Conflict(f"{locked.name} is not suspended.", code="not_suspended")
    previous = locked.suspended_reason
    locked.status = Organization.Status.ACTIVE
    locked.suspended_reason = ""
    locked.save(update_fields=["status", "suspended_reason"])
    audit.record(
        action="organization.reactivated",
        actor=actor,
        organization=locked,
        target=locked,
        data={"suspended_reason": previous},
        reason=reason,
    )
    _forget_cached_keys_after_commit(locked)
    return locked


def _forget_cached_keys_after_commit(organization: Organization) -> None:
    pk = organization.pk
    transaction.on_commit(lambda: api_key_cache_forget(organization_id=pk))


@transaction.atomic
def organization_review(*, organization: Organization, actor: User) -> Organization:
    """Sales has looked at a new customer: it leaves the dashboard's review queue."""
    require_staff_permission(actor, "accounts.review_organization", "review organizations")
    locked = organization_lock(organization)
    if locked.reviewed_at is not None:
        raise Conflict(
            f"{locked.name} was already reviewed on {format_date(locked.reviewed_at)}.",
            code="already_reviewed",
        )
    locked.reviewed_at = timezone.now()
    locked.reviewed_by = actor
    locked.save(update_fields=["reviewed_at", "reviewed_by"])
    audit.record(action="organization.reviewed", actor=actor, organization=locked, target=locked)
    return locked
