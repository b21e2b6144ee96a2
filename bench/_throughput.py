"""The reservation throughput benchmark, run inside a process whose Django is set up.

Many customers book the same pool at once: every allocation in it queues on the pool lock, so
this measures how many reservations one pool takes per second and checks that, whatever the
interleaving, no node ends up held twice for the same hour.
"""

import multiprocessing
import multiprocessing.synchronize
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Organization, User
from capacity import services
from capacity.models import Allocation, Reservation
from capacity.windows import Window, ceil_hour, window_for
from core.errors import ServiceError

from . import fixtures
from .database import Database, progress
from .stats import summarize_ms

TARGET_PER_SECOND = 100.0
HORIZON_HOURS = 8 * 7 * 24  # a block may start up to 8 weeks ahead
DURATIONS = (1, 2, 4, 8, 12, 24, 48, 72)  # hours


@dataclass(frozen=True)
class Shape:
    nodes: int
    clusters: int
    clients: int
    max_attempts: int
    max_seconds: float


FULL = Shape(nodes=500, clusters=4, clients=32, max_attempts=5_000, max_seconds=20.0)
QUICK = Shape(nodes=500, clusters=4, clients=32, max_attempts=500, max_seconds=5.0)
# One client alone first: its latency is the time a reservation holds the pool lock plus the
# work around it, so 1 / latency is about the most one pool can take however many clients wait.
SOLO = Shape(nodes=500, clusters=4, clients=1, max_attempts=100, max_seconds=3.0)


class Budget:
    """Hands out attempts until the count or the deadline runs out, across processes."""

    def __init__(self, attempts: int, seconds: float) -> None:
        self._left = multiprocessing.Value("i", attempts)
        self._deadline = multiprocessing.Value("d", float("inf"))
        self._seconds = seconds

    def start(self) -> None:
        self._deadline.value = time.time() + self._seconds

    def take(self) -> bool:
        with self._left.get_lock():
            if self._left.value <= 0 or time.time() >= self._deadline.value:
                return False
            self._left.value -= 1
            return True


@dataclass
class Tally:
    """One client's results, sent back to the parent when the client is done."""

    latencies: list[float] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    first_errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Customer:
    organization: Organization
    user: User


def _window(rng: random.Random) -> Window:
    """An hour-aligned block starting within the next 8 weeks."""
    now = timezone.now()
    starts_at = ceil_hour(now) + timedelta(hours=rng.randrange(1, HORIZON_HOURS))
    return window_for(starts_at=starts_at, duration_hours=rng.choice(DURATIONS), now=now)


def _attempt(rng: random.Random, customer: Customer, pool: fixtures.Pool, tally: Tally) -> None:
    window = _window(rng)
    began = time.perf_counter()
    try:
        services.reservation_create(
            organization=customer.organization,
            user=customer.user,
            gpu_model=pool.gpu_model,
            region=pool.region,
            node_count=rng.randint(1, 4),
            window=window,
        )
        outcome = "reserved"
    except services.SoldOut:
        outcome = "sold_out"
    except ServiceError as exc:  # e.g. Conflict "busy": the pool lock timed out
        outcome = f"{type(exc).__name__}:{exc.code}"
        tally.first_errors.setdefault(outcome, str(exc))
    except Exception as exc:  # noqa: BLE001 (count everything else, e.g. IntegrityError)
        outcome = type(exc).__name__
        tally.first_errors.setdefault(outcome, str(exc)[:300])
    tally.latencies.append(time.perf_counter() - began)
    tally.outcomes[outcome] += 1


def _client(
    seed: int,
    customer: Customer,
    pool: fixtures.Pool,
    budget: Budget,
    ready: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue,
) -> None:
    """One customer: its own process and connection (as each web worker has), opened before
    the clock starts."""
    rng = random.Random(seed)
    tally = Tally()
    try:
        connection.ensure_connection()
        ready.wait()
        while budget.take():
            _attempt(rng, customer, pool, tally)
    finally:
        connection.close()
        results.put(tally)


def _hammer(
    shape: Shape, customer: Customer, pool: fixtures.Pool, seed: int
) -> tuple[float, list[Tally]]:
    """Run the clients together, each in its own forked process (clients would share one
    interpreter lock and measure Python, not the database); the clock starts when all of
    them are connected."""
    connections.close_all()  # never share a connection with the children
    context = multiprocessing.get_context("fork")
    budget = Budget(shape.max_attempts, shape.max_seconds)
    # A timeout, so a client that cannot connect breaks the run instead of hanging it.
    ready = context.Barrier(shape.clients + 1, action=budget.start, timeout=60)
    results = context.Queue()
    clients = [
        context.Process(
            target=_client,
            args=(seed + i, customer, pool, budget, ready, results),
            name=f"client-{i}",
        )
        for i in range(shape.clients)
    ]
    for client in clients:
        client.start()
    ready.wait()
    began = time.perf_counter()
    tallies = [results.get(timeout=shape.max_seconds + 120) for _ in clients]
    wall = time.perf_counter() - began
    for client in clients:
        client.join(timeout=30)
    return wall, tallies


def _analyze() -> None:
    """Planner statistics for the catalog and nodes, as autovacuum keeps them in production."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _merge(tallies: list[Tally]) -> tuple[Counter, list[float], dict[str, str]]:
    outcomes: Counter = Counter()
    latencies: list[float] = []
    first_errors: dict[str, str] = {}
    for tally in tallies:
        outcomes.update(tally.outcomes)
        latencies += tally.latencies
        for kind, message in tally.first_errors.items():
            first_errors.setdefault(kind, message)
    return outcomes, latencies, first_errors


def _solo(customer: Customer, pool: fixtures.Pool, seed: int) -> dict:
    wall, tallies = _hammer(SOLO, customer, pool, seed)
    outcomes, latencies, _ = _merge(tallies)
    return {
        "reserved": outcomes["reserved"],
        "reservations_per_second": round(outcomes["reserved"] / wall, 1),
        "latency_ms": summarize_ms(latencies),
    }


def _statements(customer: Customer, pool: fixtures.Pool, seed: int) -> dict:
    """The SQL one uncontended reservation runs, and how much of it holds the pool lock.

    The lock is taken by the `SELECT ... FOR UPDATE` on the pool's clusters and held until
    COMMIT: every statement in between is paid for by every customer queued behind it.
    """
    tally = Tally()
    with CaptureQueriesContext(connection) as captured:
        _attempt(random.Random(seed), customer, pool, tally)
    statements = [q["sql"] for q in captured.captured_queries]
    locked_at = next((i for i, q in enumerate(statements) if q.endswith("FOR UPDATE")), None)
    committed_at = max((i for i, q in enumerate(statements) if q == "COMMIT"), default=None)
    under_lock = (
        statements[locked_at : committed_at + 1] if None not in (locked_at, committed_at) else []
    )
    return {
        "outcome": next(iter(tally.outcomes)),
        "sql_statements": len(statements),
        "under_pool_lock": len(under_lock),
        "under_pool_lock_kinds": dict(Counter(q.split(" ", 1)[0] for q in under_lock)),
    }


def run(*, db: Database, quick: bool, seed: int = 20_261_126) -> dict:
    shape = QUICK if quick else FULL
    gpu_models, regions = fixtures.load_catalog(gpu_models=1, regions=1)
    (pool,) = fixtures.load_pools(gpu_models, regions, clusters_per_pool=shape.clusters)
    fixtures.load_nodes(pool.clusters, shape.nodes)
    customer = Customer(*fixtures.verified_owner("bench-throughput"))
    _analyze()
    progress(f"1 client alone for at most {SOLO.max_seconds:.0f} s")
    solo = _solo(customer, pool, seed)
    solo["one_reservation"] = _statements(customer, pool, seed - 1)
    progress(
        f"{shape.clients} clients reserving in one pool of {shape.nodes} nodes "
        f"(at most {shape.max_attempts:,} attempts or {shape.max_seconds:.0f} s)"
    )
    before = Reservation.objects.count()
    wall, tallies = _hammer(shape, customer, pool, seed + 1000)
    outcomes, latencies, first_errors = _merge(tallies)
    reserved = outcomes["reserved"]
    per_second = reserved / wall if wall else 0.0
    return {
        "db_options": db.options,
        "pool": {"nodes": shape.nodes, "clusters": shape.clusters},
        "clients": shape.clients,
        "attempts": sum(outcomes.values()),
        "wall_seconds": round(wall, 2),
        "reserved": reserved,
        "sold_out": outcomes["sold_out"],
        "other_errors": {k: v for k, v in outcomes.items() if k not in ("reserved", "sold_out")},
        "first_error_messages": first_errors,
        "reservations_per_second": round(per_second, 1),
        "latency_ms": summarize_ms(latencies),
        # Reservations are serialized per pool, so this is the time each one kept the pool.
        "serial_ms_per_reservation": round(wall / reserved * 1000, 2) if reserved else None,
        "reservations_in_db": Reservation.objects.count() - before,
        "live_allocations": Allocation.objects.filter(released_at__isnull=True).count(),
        "oversold": fixtures.overlapping_live_pairs(),
        "single_client": solo,
        "target_per_second": TARGET_PER_SECOND,
        "passed": per_second >= TARGET_PER_SECOND,
    }
