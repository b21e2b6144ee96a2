"""Tokens mailed to people: signed e-mail verification links and random invitation tokens."""

import hashlib
import secrets

from django.conf import settings
from django.core import signing

from .models import User

_VERIFY_SALT = "accounts.email-verification"


def email_verification_token(user: User) -> str:
    # The address is part of the payload, so a link stops working if the address changes.
    return signing.dumps({"u": user.pk, "e": user.email}, salt=_VERIFY_SALT, compress=True)


def read_email_verification_token(token: str) -> tuple[int, str]:
    """Return (user id, e-mail); raises signing.SignatureExpired or signing.BadSignature."""
    payload = signing.loads(token, salt=_VERIFY_SALT, max_age=settings.EMAIL_VERIFICATION_MAX_AGE)
    if not isinstance(payload, dict) or not {"u", "e"} <= payload.keys():
        raise signing.BadSignature("Malformed verification token.")
    return int(payload["u"]), str(payload["e"])


def new_invitation_token() -> tuple[str, str]:
    """A fresh invitation token and the digest we store (the token itself is only mailed)."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
