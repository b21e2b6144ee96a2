"""Sign-up (alone or through an invitation) and e-mail verification."""

import logging

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from core import audit, context
from core.emails import queue_email
from core.errors import Conflict, ServiceError
from core.ratelimit import RateLimited, client_bucket, email_rate_enforce

from .. import tokens
from ..models import Membership, Organization, User
from .memberships import invitation_accept, invitation_for_token
from .organizations import organization_create

logger = logging.getLogger(__name__)


def normalize_email(email: str) -> str:
    return User.objects.normalize_email(email.strip()).lower()


def validate_new_email(email: str) -> str:
    email = normalize_email(email)
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict(
            "An account with this e-mail address already exists. Sign in instead.",
            code="email_taken",
            param="email",
        )
    return email


def validate_new_password(password: str, user: User) -> None:
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ServiceError(" ".join(exc.messages), code="weak_password", param="password") from exc


@transaction.atomic
def user_create(*, email: str, password: str, full_name: str = "") -> User:
    email = validate_new_email(email)
    user = User(email=email, full_name=full_name.strip())
    validate_new_password(password, user)
    user.set_password(password)
    user.full_clean(exclude=["password"])
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as exc:  # lost a race with another sign-up for the same address
        raise Conflict(
            "An account with this e-mail address already exists. Sign in instead.",
            code="email_taken",
            param="email",
        ) from exc
    audit.record(action="user.created", actor=user, target=user)
    return user


@transaction.atomic
def user_signup(
    *,
    email: str,
    password: str,
    full_name: str,
    organization_name: str,
    organization_slug: str,
    country: str,
    billing_email: str,
) -> tuple[User, Organization] | None:
    """Create the user, their organization and the owner membership together, or nothing.

    The answer never tells whether the address already has an account: for a new address the
    account is made and a verification link mailed; for a taken one nothing is made, the
    account's owner is mailed a notice instead (see `_existing_account_notify`) and None is
    returned. The caller shows the same "check your inbox" either way. Sign-ups per client
    address are limited (each mails someone), counted the same for both."""
    client = context.client_ip.get()
    if client:
        email_rate_enforce(
            kind="signup_client",
            ident=client_bucket(client),
            message=(
                "{limit} accounts were made from your network this hour, the most we allow. "
                "Try again in {minutes} minutes."
            ),
        )
    existing = User.objects.filter(email__iexact=normalize_email(email)).first()
    if existing is not None:
        make_password(password)  # as long as making the account would take: no timing tell
        _existing_account_notify(user=existing)
        return None
    try:
        user = user_create(email=email, password=password, full_name=full_name)
    except Conflict as exc:
        if exc.code != "email_taken":
            raise
        # Lost a race with another sign-up for the same address: it is an existing one now.
        _existing_account_notify(user=User.objects.get(email__iexact=normalize_email(email)))
        return None
    try:
        organization = organization_create(
            owner=user,
            name=organization_name,
            slug=organization_slug,
            country=country,
            billing_email=billing_email or user.email,
        )
    except ServiceError as exc:
        # Name the sign-up form's fields, which carry an organization_ prefix.
        exc.param = {"slug": "organization_slug", "name": "organization_name"}.get(
            exc.param or "", exc.param
        )
        raise
    email_verification_send(user=user)
    return user, organization


def _existing_account_notify(*, user: User) -> None:
    """Tell an account's owner that someone tried to sign up with their address, and how to
    get in. A few notices per address per hour at most; past that the sign-up is answered as
    always and no mail is sent, so the form cannot be used to flood someone's inbox."""
    try:
        email_rate_enforce(kind="signup_existing_recipient", ident=user.email.lower(), message="")
    except RateLimited:
        logger.info("sign-up notice to an existing account skipped: too many this hour")
        return
    queue_email(
        to=user.email,
        template="signup_existing",
        context={
            "user": user,
            "login_url": settings.SITE_URL + reverse("login"),
            "reset_url": settings.SITE_URL + reverse("password-reset"),
        },
    )


@transaction.atomic
def user_signup_with_invitation(*, token: str, password: str, full_name: str) -> Membership:
    invitation = invitation_for_token(token)
    user = user_create(email=invitation.email, password=password, full_name=full_name)
    return invitation_accept(token=token, user=user)


def verification_resend_rate_enforce(*, user: User) -> None:
    """Count one more verification link for this address: the per-session minute between
    links ends with the session, this does not (signing in again gives a new session)."""
    email_rate_enforce(
        kind="verification_recipient",
        ident=user.email.lower(),
        message="Too many verification links were sent to this address this hour. "
        "Try again in {minutes} minutes.",
    )


def password_reset_rate_enforce(*, email: str) -> None:
    """Count a password-reset request for the address typed and for the client's address.

    Counted whether or not the address has an account, and refused with one message either
    way, so the answer never says which addresses have accounts."""
    message = (
        "Too many password reset e-mails were asked for this address or from your network "
        "this hour. Try again in {minutes} minutes."
    )
    typed = User.objects.normalize_email(email.strip()).lower()
    email_rate_enforce(kind="password_reset_recipient", ident=typed, message=message)
    client = context.client_ip.get()
    if client:
        email_rate_enforce(
            kind="password_reset_client", ident=client_bucket(client), message=message
        )


def email_verification_send(*, user: User) -> None:
    if user.is_verified:
        return
    token = tokens.email_verification_token(user)
    queue_email(
        to=user.email,
        template="verify_email",
        context={"user": user, "url": settings.SITE_URL + reverse("verify-email", args=[token])},
    )


@transaction.atomic
def email_verify(*, token: str) -> User:
    try:
        user_id, email = tokens.read_email_verification_token(token)
    except signing.SignatureExpired as exc:
        raise ServiceError(
            "This verification link has expired. Sign in and send yourself a new one.",
            code="link_expired",
        ) from exc
    except signing.BadSignature as exc:
        raise ServiceError(
            "This verification link is not valid. Copy the whole link from the e-mail, or send "
            "yourself a new one.",
            code="link_invalid",
        ) from exc
    user = User.objects.select_for_update().filter(pk=user_id, email=email).first()
    if user is None:
        raise ServiceError(
            "This verification link is for an address that is no longer in use.",
            code="link_invalid",
        )
    if not user.is_verified:
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
        audit.record(action="user.email_verified", actor=user, target=user)
    return user
