"""Demo staff for `seed_demo`: one user per group, each with an authenticator key.

The key is derived from the demo password and the address, so running `seed_demo` again keeps
the same key (an authenticator app set up once keeps working) and nothing secret is stored in
the repository.
"""

import hashlib
import hmac
from base64 import b32encode
from collections.abc import Callable

from django.apps import apps
from django.contrib.auth.models import Group
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User

from .roles import FINANCE, OPERATIONS, SALES, sync_staff_groups

# (e-mail, name, group, superuser)
STAFF = [
    ("sales@example.com", "Sam Sales", SALES, False),
    ("ops@example.com", "Olive Operations", OPERATIONS, False),
    ("finance@example.com", "Fin Finance", FINANCE, False),
    ("admin@example.com", "Ada Admin", None, True),
]
DEVICE_NAME = "Demo authenticator"


def demo_key(email: str, password: str) -> bytes:
    return hmac.new(password.encode(), f"totp:{email}".encode(), hashlib.sha256).digest()[:20]


def base32(key: bytes) -> str:
    return b32encode(key).decode().rstrip("=")


def load_staff(password: str, make_user: Callable[..., User]) -> list[tuple[User, str]]:
    """Create or refresh the demo staff in their groups; returns each with its TOTP key."""
    sync_staff_groups(apps)
    made = []
    for email, name, group, superuser in STAFF:
        user = make_user(email, name, password, staff=True, superuser=superuser)
        user.groups.set([Group.objects.get(name=group)] if group else [])
        key = demo_key(email, password)
        TOTPDevice.objects.filter(user=user).exclude(name=DEVICE_NAME).delete()
        TOTPDevice.objects.update_or_create(
            user=user, name=DEVICE_NAME, defaults={"key": key.hex(), "confirmed": True}
        )
        made.append((user, base32(key)))
    return made


def current_code(user: User) -> str:
    """The code the user's demo authenticator shows right now."""
    from django_otp.oath import TOTP

    device = TOTPDevice.objects.get(user=user, name=DEVICE_NAME)
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"
