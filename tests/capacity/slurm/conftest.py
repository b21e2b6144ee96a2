"""A real Slurm controller for the Slurm driver's tests: started once per test session (well
under a second; a few seconds with accounting), stopped at the end. Each test books its own
nodes and every Slurm reservation and job is removed after it."""

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.models import Organization
from capacity import provisioning
from capacity.models import Allocation, Cluster, GpuModel, ListPrice, Node, Region, Reservation

from .cluster import INSTALL_HINT, NEEDED, NEEDED_ACCOUNTING, SlurmCluster, missing

DRIVER = "capacity.drivers.slurm.SlurmDriver"


@pytest.fixture(autouse=True)
def frozen_clock() -> None:
    """Slurm keeps real time, so these tests do too (the capacity tests' clock is frozen)."""
    return None


def _skip_without(commands: tuple[str, ...]) -> None:
    """Skip where Slurm cannot run here; where the environment says it must (CI, once it has
    installed the packages: SLURM_TESTS_REQUIRED=1) the same reason fails the test instead."""
    give_up = pytest.fail if os.environ.get("SLURM_TESTS_REQUIRED") == "1" else pytest.skip
    absent = missing(commands)
    if absent:
        give_up(f"needs the Slurm commands ({', '.join(absent)} not found): {INSTALL_HINT}")
    if os.geteuid() != 0:
        give_up("needs root: slurmd, and munged as the munge user, are started by the test")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    _skip_without(NEEDED)
    cluster = SlurmCluster(nodes=12).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def slurm_accounting_cluster() -> Iterator[SlurmCluster]:
    """A second, smaller cluster with slurmdbd on a throwaway MariaDB and enforced
    associations: a reservation for an account unknown to the database is refused."""
    _skip_without(NEEDED + NEEDED_ACCOUNTING)
    cluster = SlurmCluster(nodes=2, prefix="acc", accounting=True, name="hbacct").start()
    yield cluster
    cluster.stop()


def _use(cluster: SlurmCluster, settings, accounting: bool) -> Iterator[SlurmCluster]:
    settings.PROVISIONING_DRIVER = DRIVER
    settings.SLURM_CONF = str(cluster.conf)
    settings.SLURM_BIN_DIR = ""
    settings.SLURM_ACCOUNTING = accounting
    settings.SLURM_COMMAND_TIMEOUT = 15
    settings.SLURM_LOGIN_HOST = "login.test.example"
    settings.SLURM_LOGIN_USER = ""
    # The blocks here start this hour: retrying stays within their budget whatever the minute.
    settings.PROVISIONING_GIVE_UP_AFTER_START = timedelta(hours=1)
    yield cluster
    cluster.run("scancel", "--user=root", check=False)
    cluster.delete_all_reservations()


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster, settings) -> Iterator[SlurmCluster]:
    """The session's cluster, with the Slurm driver pointed at it (no accounting)."""
    yield from _use(slurm_cluster, settings, accounting=False)


@pytest.fixture
def slurm_accounting(slurm_accounting_cluster: SlurmCluster, settings) -> Iterator[SlurmCluster]:
    yield from _use(slurm_accounting_cluster, settings, accounting=True)


@pytest.fixture
def slurm_org(db: None) -> Organization:
    from tests.factories import OrganizationFactory

    return OrganizationFactory(name="Acme Labs", slug="acme-labs")


@pytest.fixture
def inventory(db: None):
    """inventory(["gpu001", "gpu002"]): a cluster of exactly those Slurm nodes, priced."""
    h100 = GpuModel.objects.create(slug="h100", name="H100", memory_gb=80)
    region = Region.objects.create(code="test-1", name="Test 1")
    ListPrice.objects.create(gpu_model=h100, region=region, price_per_gpu_hour=Decimal("2.00"))

    def make(nodes: list[str], code: str = "slurm-test") -> Cluster:
        cluster = Cluster.objects.create(code=code, region=region, gpu_model=h100)
        Node.objects.bulk_create(Node(cluster=cluster, hostname=n) for n in nodes)
        return cluster

    return make


def this_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def block(
    organization: Organization,
    cluster: Cluster,
    nodes: list[str],
    *,
    starts_at: datetime | None = None,
    hours: int = 2,
    state: str = Reservation.State.SCHEDULED,
) -> Reservation:
    """A paid reservation of exactly `nodes` (what the allocator would have picked)."""
    starts_at = starts_at or this_hour()
    ends_at = starts_at + timedelta(hours=hours)
    reservation = Reservation.objects.create(
        organization=organization,
        gpu_model=cluster.gpu_model,
        region=cluster.region,
        cluster=cluster,
        node_count=len(nodes),
        starts_at=starts_at,
        ends_at=ends_at,
        state=state,
        currency="usd",
        price_per_gpu_hour=Decimal("2.00"),
        price_source="list",
        subtotal=Decimal("32.00") * len(nodes) * hours,
        discount=Decimal("0"),
        total=Decimal("32.00") * len(nodes) * hours,
    )
    for node in Node.objects.filter(hostname__in=nodes):
        Allocation.objects.create(
            reservation=reservation,
            node=node,
            cluster=cluster,
            starts_at=starts_at,
            ends_at=ends_at,
        )
    return reservation


def state(reservation: Reservation) -> str:
    reservation.refresh_from_db()
    return reservation.state


def start(reservation: Reservation, capture) -> None:
    """What the beat does at the start: provisioning, then the (eager) provision task."""
    with capture(execute=True):
        assert provisioning.reservation_start(reservation)
