"""Back-office tests: staff users in their groups, signed in with the second factor."""

from collections.abc import Callable

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User
from backoffice.roles import FINANCE, OPERATIONS, SALES
from tests.factories import UserFactory

GROUPS = (SALES, OPERATIONS, FINANCE)


def make_staff(group: str | None = None, *, superuser: bool = False, email: str = "") -> User:
    fields = {"email": email} if email else {}
    user = UserFactory(is_staff=True, is_superuser=superuser, **fields)
    if group is not None:
        user.groups.add(Group.objects.get(name=group))
    return user


def verified_client(user: User) -> Client:
    """A client signed in as `user` who has passed the second factor."""
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    device = device or TOTPDevice.objects.create(user=user, name="test", confirmed=True)
    client = Client()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


@pytest.fixture
def staff() -> Callable[..., User]:
    """`staff("Sales")` makes a staff user in that group; `staff(superuser=True)` a superuser."""
    return make_staff


@pytest.fixture
def staff_client(db: None) -> Callable[..., Client]:
    """`staff_client("Finance")`: a verified admin client for a new member of that group."""

    def make(group: str | None = None, *, superuser: bool = False) -> Client:
        client = verified_client(make_staff(group, superuser=superuser))
        return client

    return make
