"""Many customers race for the last free nodes on PostgreSQL.

SQLite serializes every writer with its immediate transactions, so the race only exists on
PostgreSQL; `.ci/run` always runs this file there.
"""

import os
import threading
import uuid

import pytest
import redis
from django.core.management import call_command
from django.db import IntegrityError, OperationalError, connection, connections

from accounts.permissions import Role
from capacity import limits, services
from capacity.models import Allocation, Node, Reservation
from capacity.windows import Window
from core.errors import ServiceError
from tests.conftest import member_of
from tests.factories import OrganizationFactory

from .conftest import NEXT_HOUR, hours

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
RACERS = 12
NODES_EACH = 2


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL (.ci/run always does)")


def overlapping_live_pairs() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FROM capacity_allocation a JOIN capacity_allocation b
              ON a.node_id = b.node_id AND a.id < b.id
             AND a.released_at IS NULL AND b.released_at IS NULL
             AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at
            """
        )
        return cursor.fetchone()[0]


def race(catalog, organization=None, *, racers: int = RACERS, nodes: int = NODES_EACH) -> list[str]:
    """`racers` customers each try to reserve `nodes` nodes in us-east for the same window: one
    organization's members, or (no `organization`) one organization each, so that only the pool
    lock stands between them and not the organization's."""
    users = [member_of(organization or OrganizationFactory(), Role.MEMBER) for _ in range(racers)]
    start = threading.Barrier(racers, timeout=30)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(user) -> None:
        try:
            start.wait()
            services.reservation_create(
                organization=user.memberships.get().organization, user=user,
                gpu_model=catalog.h100, region=catalog.east, node_count=nodes,
                window=Window(NEXT_HOUR, NEXT_HOUR + hours(24)),
            )  # fmt: skip
            outcome = "won"
        except services.SoldOut:
            outcome = "sold out"
        except IntegrityError:
            outcome = "integrity error"
        except OperationalError as exc:  # PostgreSQL broke a deadlock between two of them
            outcome = "deadlock" if "deadlock" in str(exc) else f"database error: {exc}"
        except threading.BrokenBarrierError:
            outcome = "never got to race"
        except ServiceError as exc:
            outcome = exc.code
        finally:
            connections.close_all()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(outcomes)


@pytest.fixture
def eight_nodes(catalog):
    """Only east-b's 8 nodes are in service in us-east."""
    Node.objects.filter(cluster=catalog.east_a).update(status=Node.Status.MAINTENANCE)
    return catalog


def test_exactly_the_free_nodes_are_sold_and_losers_get_a_clean_answer(eight_nodes):
    outcomes = race(eight_nodes)
    assert outcomes == ["sold out"] * (RACERS - 4) + ["won"] * 4
    assert Allocation.objects.filter(released_at__isnull=True).count() == 8
    assert overlapping_live_pairs() == 0


def test_negative_control_without_the_lock_the_race_shows(eight_nodes, settings, monkeypatch):
    """Proves the test above can fail: with the pool lock off and every racer made to read the
    free nodes before anyone writes, losers hit the exclusion constraint instead of a clean
    "sold out". The constraint still keeps the data right."""
    settings.CAPACITY_SERIALIZE_ALLOCATIONS = False
    everyone_has_read = threading.Barrier(RACERS, timeout=30)
    monkeypatch.setattr(services, "_after_candidates", everyone_has_read.wait)
    outcomes = race(eight_nodes)
    # Everyone picked the same first two nodes: one wins, the rest crash into the constraint
    # (checking it, PostgreSQL may also find two losers waiting on each other: a deadlock).
    assert len(outcomes) == RACERS
    assert outcomes.count("won") == 1
    assert set(outcomes) - {"won"} <= {"integrity error", "deadlock"}, outcomes
    assert outcomes.count("integrity error") >= 1
    assert overlapping_live_pairs() == 0


# --- One organization's limits (capacity/limits.py) ---------------------------------------------
CAP = 3


def test_holds_racing_for_the_last_place_under_a_cap_get_exactly_the_cap(
    catalog, organization, settings
):
    """CAP + 1 members of one organization hold at once, one node each, with room for all: the
    organization's lock lets exactly CAP through; the last is told the limit."""
    settings.CAPACITY_LIMITS = {
        tier: {"open_holds": CAP, "held_node_hours": None, "live_nodes": None}
        for tier in ("self_serve", "enterprise")
    }
    outcomes = race(catalog, organization, racers=CAP + 1, nodes=1)
    assert outcomes == ["open_holds_limit"] + ["won"] * CAP
    assert Reservation.objects.filter(organization=organization).count() == CAP


def test_live_nodes_racing_under_a_cap_get_exactly_the_cap(catalog, organization, settings):
    settings.CAPACITY_LIMITS = {
        tier: {"open_holds": None, "held_node_hours": None, "live_nodes": 2 * CAP}
        for tier in ("self_serve", "enterprise")
    }
    outcomes = race(catalog, organization, racers=CAP + 1, nodes=2)
    assert outcomes == ["live_nodes_limit"] + ["won"] * CAP


@pytest.mark.parametrize("backend", ["locmem", "database", "redis"])
def test_holds_racing_the_rate_limit_get_exactly_the_rate(catalog, organization, settings, backend):
    """The counter is atomic with the local-memory cache and Redis on their own; the database
    cache's `incr` reads then writes, and the organization's lock serializes it."""
    if backend == "redis":
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        except redis.RedisError:
            pytest.skip(f"needs Redis at {url}")
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": url,
                "KEY_PREFIX": f"hb-test-{uuid.uuid4().hex}",  # apart from any other run
            }
        }
    if backend == "database":
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.db.DatabaseCache",
                "LOCATION": "hb_test_cache",
            }
        }
        call_command("createcachetable", verbosity=0)
    settings.CAPACITY_HOLD_RATE_PER_MINUTE = CAP
    outcomes = race(catalog, organization, racers=CAP + 2, nodes=1)
    assert outcomes == ["hold_rate_limited"] * 2 + ["won"] * CAP


def test_negative_control_without_the_organizations_lock_every_hold_passes_the_cap(
    catalog, organization, settings, monkeypatch
):
    """Proves the cap test can fail: with the organization read unlocked and every racer made to
    pass the check before anyone writes, all CAP + 1 holds are made."""
    settings.CAPACITY_LIMITS = {
        tier: {"open_holds": CAP, "held_node_hours": None, "live_nodes": None}
        for tier in ("self_serve", "enterprise")
    }
    monkeypatch.setattr(
        limits, "organization_hold_lock", lambda org: type(org).objects.get(pk=org.pk)
    )
    everyone_has_checked = threading.Barrier(CAP + 1, timeout=30)
    check = limits.hold_limits_check

    def check_then_wait(**kwargs) -> None:
        check(**kwargs)
        everyone_has_checked.wait()

    monkeypatch.setattr(limits, "hold_limits_check", check_then_wait)
    assert race(catalog, organization, racers=CAP + 1, nodes=1) == ["won"] * (CAP + 1)
