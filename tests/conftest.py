import socket
import time

import pytest
from django.test import Client

from accounts.decorators import REAUTH_SESSION_KEY
from accounts.models import Organization, User
from accounts.permissions import Role

from .factories import PASSWORD, MembershipFactory, OrganizationFactory


@pytest.fixture(autouse=True)
def _no_outside_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to loopback only; anything else is a bug in the test or the code."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (
            host.startswith("127.") or host in {"localhost", "::1"} or host.startswith("/")
        ):
            raise OSError(f"Network access outside loopback in tests: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    """Each test starts with an empty cache (rate buckets, cached API keys)."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
def organization(db: None) -> Organization:
    return OrganizationFactory()


@pytest.fixture
def owner(organization: Organization) -> User:
    return MembershipFactory(organization=organization, role=Role.OWNER).user


@pytest.fixture
def other_organization(db: None) -> Organization:
    """A second tenant whose data must stay invisible to the first."""
    org = OrganizationFactory(name="Other Co", slug="other-co")
    MembershipFactory(organization=org, role=Role.OWNER)
    return org


def member_of(organization: Organization, role: str) -> User:
    return MembershipFactory(organization=organization, role=role).user


def client_for(user: User, *, reauthenticated: bool = False) -> Client:
    """A signed-in client; `reauthenticated` as if the password was just typed again, which
    managing keys, cards and roles asks for (tests/accounts/test_reauthentication.py)."""
    client = Client()
    client.force_login(user)
    if reauthenticated:
        session = client.session
        session[REAUTH_SESSION_KEY] = time.time()
        session.save()
    return client
