"""The API benchmarks, run in a process whose Django is set up on the bench database."""

import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import requests
from django.utils import timezone

from accounts import api_keys
from billing.models import ModelPrice, UsageEvent
from capacity import services as capacity_services
from capacity.windows import Window, ceil_hour

from . import fixtures, stack
from .database import Database, progress
from .stats import summarize_ms

CLIENTS = 8
TARGET_SHARE = 0.5
TARGET_EVENTS_PER_SECOND = 10_000


def _load(url: str, seconds: float, headers: dict[str, str]) -> dict:
    """Keep CLIENTS connections busy with GETs of `url` for `seconds`; rate and latency."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        mine = []
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            response = session.get(url, headers=headers, timeout=30)
            mine.append(time.perf_counter() - began)
            if response.status_code != 200:
                errors[0] += 1
        with lock:
            latencies.extend(mine)

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        for _ in range(CLIENTS):
            pool.submit(client)
    wall = time.perf_counter() - began
    return {
        "requests_per_second": round(len(latencies) / wall, 1),
        "latency_ms": summarize_ms(latencies),
        "errors": errors[0],
    }


def _batches(count: int, size: int, start: datetime) -> list[bytes]:
    return [
        json.dumps(
            {
                "events": [
                    {
                        "id": f"bench-{b}-{i}",
                        "model": "llama-70b",
                        "input_tokens": 1200,
                        "output_tokens": 300,
                        "time": (start + timedelta(seconds=i)).isoformat(),
                    }
                    for i in range(size)
                ]
            }
        ).encode()
        for b in range(count)
    ]


def run(*, db: Database, quick: bool) -> dict:
    seconds = 5.0 if quick else 15.0
    gpu_models, regions = fixtures.load_catalog(gpu_models=1, regions=1)
    (pool,) = fixtures.load_pools(gpu_models, regions, clusters_per_pool=2)
    fixtures.load_nodes(pool.clusters, 60)
    organization, owner = fixtures.verified_owner("bench-api")
    start = ceil_hour(timezone.now()) + timedelta(hours=1)
    for n in range(25):
        begin = start + timedelta(hours=n)
        capacity_services.reservation_create(
            organization=organization,
            user=owner,
            gpu_model=pool.gpu_model,
            region=pool.region,
            node_count=1,
            window=Window(begin, begin + timedelta(hours=1)),
        )
    ModelPrice.objects.create(
        model="llama-70b", input_per_million=Decimal("0.6"), output_per_million=Decimal("2.4")
    )
    _record, key = api_keys.api_key_create(
        organization=organization,
        actor=owner,
        name="bench",
        scopes=["reservations:read", "usage:write"],
    )
    scratch = Path(tempfile.mkdtemp(prefix="hb-bench-api-"))
    port = stack.free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.local",
        "DJANGO_DEBUG": "false",
        "DATABASE_URL": db.url,
        "CACHE_URL": "locmemcache://",
        "API_RATE_LIMIT": "100000000",
        "LOG_LEVEL": "WARNING",
    }
    processes = stack.start(
        {
            "web": [
                stack.PYTHON,
                "-m",
                "gunicorn",
                "portal.wsgi",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
            ]
        },
        env,
        scratch,
    )
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    try:
        stack.wait_for(f"{base}/healthz", scratch)
        progress(
            f"{CLIENTS} clients: the reservation list, then the bare view, {seconds:.0f} s each"
        )
        listing = _load(f"{base}/api/v1/reservations/?limit=20", seconds, auth)
        ceiling = _load(f"{base}/healthz", seconds, {})
        batches = 10 if quick else 40
        progress(f"usage ingestion: {batches} batches of 1,000 events")
        bodies = _batches(batches, 1000, datetime.now(UTC) - timedelta(hours=2))
        session = requests.Session()
        headers = {**auth, "Content-Type": "application/json"}
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as senders:
            statuses = list(
                senders.map(
                    lambda b: (
                        session.post(
                            f"{base}/api/v1/usage/", data=b, headers=headers, timeout=120
                        ).status_code
                    ),
                    bodies,
                )
            )
        ingest_wall = time.perf_counter() - began
    finally:
        stack.stop(processes)
        shutil.rmtree(scratch, ignore_errors=True)
    stored = UsageEvent.objects.count()
    share = (
        listing["requests_per_second"] / ceiling["requests_per_second"]
        if ceiling["requests_per_second"]
        else 0
    )
    per_second = stored / ingest_wall
    return {
        "reservation_list": listing,
        "bare_view": ceiling,
        "share_of_ceiling": round(share, 2),
        "list_passed": share >= TARGET_SHARE,
        "usage": {
            "events": batches * 1000,
            "stored": stored,
            "statuses": sorted(set(statuses)),
            "events_per_second": round(per_second),
            "passed": per_second >= TARGET_EVENTS_PER_SECOND,
        },
    }
