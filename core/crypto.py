"""Encryption for secrets we must keep and show again (a block's kubeconfig).

The key is FIELD_ENCRYPTION_KEY (a Fernet key) when set, else derived from SECRET_KEY, so
development works out of the box; production sets its own and can rotate SECRET_KEY apart.
"""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


def _fernet() -> Fernet:
    key = settings.FIELD_ENCRYPTION_KEY or base64.urlsafe_b64encode(
        hashlib.sha256(f"field-encryption:{settings.SECRET_KEY}".encode()).digest()
    )
    return Fernet(key)


def encrypt(text: str) -> str:
    return _fernet().encrypt(text.encode()).decode() if text else ""


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("The secret cannot be read with the current encryption key.") from exc
