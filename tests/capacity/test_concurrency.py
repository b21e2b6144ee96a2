"""Many customers race for the last free nodes on PostgreSQL.

SQLite serializes every writer with its immediate transactions, so the race only exists on
PostgreSQL; `.ci/run` always runs this file there.
"""

import threading

import pytest
from django.db import IntegrityError, connection, connections

from accounts.permissions import Role
from capacity import services
from capacity.models import Allocation, Node
from capacity.windows import Window
from tests.conftest import member_of

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


def race(catalog, organization) -> list[str]:
    """RACERS members each try to reserve NODES_EACH nodes of the same 8 for the same window."""
    users = [member_of(organization, Role.MEMBER) for _ in range(RACERS)]
    start = threading.Barrier(RACERS, timeout=30)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(user) -> None:
        try:
            start.wait()
            services.reservation_create(
                organization=organization, user=user, gpu_model=catalog.h100, region=catalog.east,
                node_count=NODES_EACH, window=Window(NEXT_HOUR, NEXT_HOUR + hours(24)),
            )  # fmt: skip
            outcome = "won"
        except services.SoldOut:
            outcome = "sold out"
        except IntegrityError:
            outcome = "integrity error"
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


def test_exactly_the_free_nodes_are_sold_and_losers_get_a_clean_answer(eight_nodes, organization):
    outcomes = race(eight_nodes, organization)
    assert outcomes == ["sold out"] * (RACERS - 4) + ["won"] * 4
    assert Allocation.objects.filter(released_at__isnull=True).count() == 8
    assert overlapping_live_pairs() == 0


def test_negative_control_without_the_lock_the_race_shows(
    eight_nodes, organization, settings, monkeypatch
):
    """Proves the test above can fail: with the pool lock off and every racer made to read the
    free nodes before anyone writes, losers hit the exclusion constraint instead of a clean
    "sold out". The constraint still keeps the data right."""
    settings.CAPACITY_SERIALIZE_ALLOCATIONS = False
    everyone_has_read = threading.Barrier(RACERS, timeout=30)
    monkeypatch.setattr(services, "_after_candidates", everyone_has_read.wait)
    outcomes = race(eight_nodes, organization)
    # Everyone picked the same first two nodes: one wins, the rest crash into the constraint.
    assert outcomes == ["integrity error"] * (RACERS - 1) + ["won"]
    assert overlapping_live_pairs() == 0
