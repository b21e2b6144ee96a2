"""The offerings search benchmark, run inside a process whose Django is set up (bench.search).

Dataset: nodes over 3 regions x 3 GPU models (several clusters per pool) and live allocations
laid out per node as non-overlapping windows over the next 8 weeks, grouped into multi-node
reservations where windows coincide. Pools differ in load (cool, warm, hot) so the same
catalog yields exact fits, sold-out windows with alternatives, and partial availability.
"""

import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Organization, User
from capacity import offerings, pricing
from capacity.models import Allocation, GpuModel, Region, Reservation
from capacity.windows import HOUR, ceil_hour, window_for

from . import fixtures
from .database import progress
from .stats import summarize_ms

TARGET_P95_MS = 50.0
SLOT = 6  # hours; allocations start and end on a 6-hour grid so windows coincide across nodes
HORIZON_SLOTS = 8 * 7 * 24 // SLOT  # the 8 weeks a block may start within
RESERVATION_MAX_NODES = 8  # coinciding windows of a cluster are grouped into reservations
# Per pool load: how many allocations a node gets relative to the average (cool 1/2, warm 1,
# hot 3/2, so the total stays as asked) and their lengths in slots. The longest allocation
# times a hot node's count must fit the horizon: 7 slots x 30 = 210 <= 224.
LOADS: dict[str, tuple[int, tuple[int, ...]]] = {
    "cool": (1, (1, 2, 3, 4, 6)),  # ~14% of node-hours booked: long blocks still fit
    "warm": (2, (1, 2, 3, 4, 6)),  # ~29%
    "hot": (3, (2, 4, 5, 6, 7)),  # ~64%: long or large blocks are sold out
}
LOAD_ORDER = ("cool", "warm", "hot")


@dataclass(frozen=True)
class Shape:
    nodes: int
    allocations: int
    clusters_per_pool: int
    queries: int


FULL = Shape(nodes=10_000, allocations=200_000, clusters_per_pool=4, queries=300)
QUICK = Shape(nodes=1_000, allocations=20_000, clusters_per_pool=4, queries=60)


@dataclass(frozen=True)
class Query:
    category: str  # "exact", "sold_out" or "any_region": what the query is built to exercise
    gpu_model: GpuModel
    region: Region | None
    node_count: int
    start_offset_hours: int | None  # from the next full hour; None means "start now"
    duration_hours: int


# --- Dataset ----------------------------------------------------------------------------------
def _pool_load(gpu_index: int, region_index: int) -> str:
    """Each GPU model is hot in one region, warm in one and cool in one."""
    return LOAD_ORDER[(gpu_index + region_index) % len(LOAD_ORDER)]


def _node_windows(
    rng: random.Random, count: int, lengths: tuple[int, ...]
) -> list[tuple[int, int]]:
    """`count` non-overlapping (start slot, length) windows in the horizon, in time order.

    The spare slots are cut at `count` sorted random points: the gap before each window.
    """
    sizes = [rng.choice(lengths) for _ in range(count)]
    spare = HORIZON_SLOTS - sum(sizes)
    if spare < 0:
        raise ValueError("Allocations per node do not fit the horizon; shorten LOADS.")
    cuts = sorted(rng.randint(0, spare) for _ in range(count))
    windows = []
    position = 0
    previous_cut = 0
    for size, cut in zip(sizes, cuts, strict=True):
        position += cut - previous_cut
        previous_cut = cut
        windows.append((position, size))
        position += size
    return windows


def _reservation_groups(
    rng: random.Random, node_ids: list[int], per_node: list[int], lengths: tuple[int, ...]
) -> dict[tuple[int, int], list[int]]:
    """(start slot, length) -> the cluster's nodes busy exactly then."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for node_id, count in zip(node_ids, per_node, strict=True):
        for window in _node_windows(rng, count, lengths):
            groups[window].append(node_id)
    return groups


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _reservation(
    pool: fixtures.Pool,
    cluster_id: int,
    nodes: int,
    start: datetime,
    hours: int,
    owner: tuple[Organization, User],
) -> Reservation:
    """A paid (scheduled) reservation: it stays live and no hold ever lapses during the run."""
    total = pricing.money(nodes * pool.gpu_model.gpus_per_node * hours * pool.price_per_gpu_hour)
    return Reservation(
        organization=owner[0],
        created_by=owner[1],
        gpu_model=pool.gpu_model,
        region=pool.region,
        cluster_id=cluster_id,
        node_count=nodes,
        starts_at=start,
        ends_at=start + hours * HOUR,
        state=Reservation.State.SCHEDULED,
        currency="usd",
        price_per_gpu_hour=pool.price_per_gpu_hour,
        price_source="list",
        subtotal=total,
        discount=Decimal("0.00"),
        total=total,
    )


def _write_bookings(
    pool: fixtures.Pool,
    cluster_id: int,
    groups: dict[tuple[int, int], list[int]],
    origin: datetime,
    owner: tuple[Organization, User],
) -> int:
    """Reservations first (their ids are needed), then their allocations; both in bulk."""
    blocks = [
        (slot, size, chunk)
        for (slot, size), node_ids in groups.items()
        for chunk in _chunks(node_ids, RESERVATION_MAX_NODES)
    ]
    reservations = Reservation.objects.bulk_create(
        (
            _reservation(
                pool, cluster_id, len(chunk), origin + slot * SLOT * HOUR, size * SLOT, owner
            )
            for slot, size, chunk in blocks
        ),
        batch_size=fixtures.BATCH,
    )
    allocations = [
        Allocation(
            reservation_id=reservation.pk,
            node_id=node_id,
            cluster_id=cluster_id,
            starts_at=reservation.starts_at,
            ends_at=reservation.ends_at,
        )
        for reservation, (_, _, chunk) in zip(reservations, blocks, strict=True)
        for node_id in chunk
    ]
    Allocation.objects.bulk_create(allocations, batch_size=fixtures.BATCH)
    return len(allocations)


def _apportion(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights`; the remainder goes one each to the first."""
    whole = sum(weights)
    counts = [total * w // whole for w in weights]
    for i in range(total - sum(counts)):
        counts[i % len(counts)] += 1
    return counts


def build_dataset(shape: Shape, rng: random.Random) -> tuple[list[fixtures.Pool], dict[str, str]]:
    """Write the catalog, inventory and bookings; return the pools and each pool's load."""
    gpu_models, regions = fixtures.load_catalog(gpu_models=3, regions=3)
    pools = fixtures.load_pools(gpu_models, regions, clusters_per_pool=shape.clusters_per_pool)
    clusters = [c for pool in pools for c in pool.clusters]
    nodes_by_cluster = fixtures.load_nodes(clusters, shape.nodes)
    loads = [_pool_load(gpu_models.index(p.gpu_model), regions.index(p.region)) for p in pools]
    weights = [
        LOADS[load][0]
        for pool, load in zip(pools, loads, strict=True)
        for cluster in pool.clusters
        for _ in nodes_by_cluster[cluster.pk]
    ]
    per_node = iter(_apportion(shape.allocations, weights))
    owner = fixtures.verified_owner("background-load")
    origin = ceil_hour(timezone.now())
    written = 0
    for pool, load in zip(pools, loads, strict=True):
        for cluster in pool.clusters:
            node_ids = nodes_by_cluster[cluster.pk]
            counts = [next(per_node) for _ in node_ids]
            groups = _reservation_groups(rng, node_ids, counts, LOADS[load][1])
            written += _write_bookings(pool, cluster.pk, groups, origin, owner)
    assert written == shape.allocations, (written, shape.allocations)
    return pools, {
        f"{p.gpu_model.slug}/{p.region.code}": load for p, load in zip(pools, loads, strict=True)
    }


def _analyze() -> None:
    """Planner statistics, as a production database has them (autovacuum, PRAGMA optimize)."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


# --- Queries ----------------------------------------------------------------------------------
def _start(rng: random.Random) -> int | None:
    """One query in ten asks to start now; the rest pick an hour in the next 8 weeks."""
    return None if rng.random() < 0.1 else rng.randrange(1, HORIZON_SLOTS * SLOT - 24)


def make_queries(
    count: int, pools: list[fixtures.Pool], loads: dict[str, str], rng: random.Random
) -> list[Query]:
    """40% small short blocks in cool/warm pools, 30% long blocks in hot pools, 30% any region."""
    by_load: dict[str, list[fixtures.Pool]] = defaultdict(list)
    for pool in pools:
        by_load[loads[f"{pool.gpu_model.slug}/{pool.region.code}"]].append(pool)
    gpu_models = sorted({p.gpu_model for p in pools}, key=lambda g: g.pk)
    queries = []
    for i in range(count):
        kind = i % 10
        if kind < 4:
            pool = rng.choice(by_load["cool"] + by_load["warm"])
            queries.append(
                Query(
                    "exact",
                    pool.gpu_model,
                    pool.region,
                    rng.choice([1, 2, 4, 8]),
                    _start(rng),
                    rng.choice([1, 2, 4, 8, 12, 24]),
                )
            )
        elif kind < 7:
            pool = rng.choice(by_load["hot"])
            queries.append(
                Query(
                    "sold_out",
                    pool.gpu_model,
                    pool.region,
                    rng.choice([8, 16, 32]),
                    _start(rng),
                    rng.choice([48, 72, 168]),
                )
            )
        else:
            queries.append(
                Query(
                    "any_region",
                    rng.choice(gpu_models),
                    None,
                    rng.choice([1, 2, 4, 8, 16, 32, 64]),
                    _start(rng),
                    rng.choice([1, 4, 24, 72, 168, 336]),
                )
            )
    return queries


def _search(query: Query, organization: Organization) -> list[offerings.Offering]:
    now = timezone.now()
    starts_at = (
        None
        if query.start_offset_hours is None
        else ceil_hour(now) + timedelta(hours=query.start_offset_hours)
    )
    window = window_for(starts_at=starts_at, duration_hours=query.duration_hours, now=now)
    return offerings.search(
        organization=organization,
        gpu_model=query.gpu_model,
        region=query.region,
        node_count=query.node_count,
        window=window,
        now=now,
    )


def _outcome(results: list[offerings.Offering]) -> str:
    if not results:
        return "nothing"
    return "exact" if results[0].kind == "exact" else "alternatives"


def _describe(query: Query) -> dict:
    described = asdict(query)
    described["gpu_model"] = query.gpu_model.slug
    described["region"] = query.region.code if query.region else None
    return described


# --- Measurement ------------------------------------------------------------------------------
def _time_queries(queries: list[Query], organization: Organization) -> list[dict]:
    rows = []
    for query in queries:
        began = time.perf_counter()
        results = _search(query, organization)
        elapsed = time.perf_counter() - began
        rows.append({"category": query.category, "seconds": elapsed, "outcome": _outcome(results)})
    return rows


def _query_profile(query: Query, organization: Organization) -> dict:
    """SQL statements one search runs and the slowest of them, for the report's evidence."""
    with CaptureQueriesContext(connection) as captured:
        began = time.perf_counter()
        _search(query, organization)
        elapsed = time.perf_counter() - began
    statements = sorted(captured.captured_queries, key=lambda q: float(q["time"]), reverse=True)
    sql_ms = sum(float(q["time"]) for q in statements) * 1000
    return {
        "query": _describe(query),
        "ms": round(elapsed * 1000, 2),
        "sql_statements": len(statements),
        "sql_ms": round(sql_ms, 2),
        "slowest_sql": [
            {"ms": round(float(q["time"]) * 1000, 2), "sql": q["sql"][:300]} for q in statements[:3]
        ],
    }


def _summaries(rows: list[dict]) -> dict:
    by_category: dict[str, list[float]] = defaultdict(list)
    outcomes: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        by_category[row["category"]].append(row["seconds"])
        outcomes[row["category"]][row["outcome"]] += 1
    return {
        "latency_ms": summarize_ms([row["seconds"] for row in rows]),
        "by_category": {
            category: {"latency_ms": summarize_ms(seconds), "outcomes": dict(outcomes[category])}
            for category, seconds in sorted(by_category.items())
        },
    }


def run(*, quick: bool, seed: int = 20_261_126) -> dict:
    shape = QUICK if quick else FULL
    rng = random.Random(seed)  # the same dataset and queries on every database and run
    progress(f"building {shape.nodes:,} nodes and {shape.allocations:,} allocations")
    began = time.perf_counter()
    with transaction.atomic():  # one commit: SQLite would otherwise sync after every batch
        pools, loads = build_dataset(shape, rng)
    build_seconds = time.perf_counter() - began
    began = time.perf_counter()
    _analyze()
    analyze_seconds = time.perf_counter() - began
    organization, _ = fixtures.verified_owner("bench-search")
    queries = make_queries(shape.queries, pools, loads, rng)
    progress(f"dataset in {build_seconds:.1f} s; timing {len(queries)} searches")
    _time_queries(queries[:5], organization)  # warm-up: caches, prepared plans, page cache
    rows = _time_queries(queries, organization)
    summary = _summaries(rows)
    first_of = {q.category: q for q in reversed(queries)}
    return {
        "dataset": {
            "nodes": shape.nodes,
            "clusters": sum(len(p.clusters) for p in pools),
            "pools": loads,
            "allocations": Allocation.objects.count(),
            "reservations": Reservation.objects.count(),
            "overlapping_live_pairs": fixtures.overlapping_live_pairs(),
            "build_seconds": round(build_seconds, 1),
            "analyze_seconds": round(analyze_seconds, 1),
        },
        "queries": len(queries),
        **summary,
        "target_p95_ms": TARGET_P95_MS,
        "passed": summary["latency_ms"]["p95"] < TARGET_P95_MS,
        "profiles": {c: _query_profile(q, organization) for c, q in sorted(first_of.items())},
    }
