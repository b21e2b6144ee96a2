"""The webhook intake benchmark, run inside a process whose Django is set up on the bench
database (it reads the results from there; gunicorn and the worker are separate processes)."""

import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from billing.models import WebhookEvent, WebhookProcessing

from . import stack
from .database import Database, progress
from .stats import summarize_ms

SECRET = "whsec_bench_only"
TARGET_P99_MS = 50.0
CONCURRENCY = 4  # Stripe delivers to one endpoint a few requests at a time
WEB_WORKERS = 2
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")


def _sign(body: bytes) -> str:
    return stack.sign(body, SECRET)


def _events(unique: int, duplicates: int, rng: random.Random) -> list[bytes]:
    """Event types we store and acknowledge without calling Stripe, so intake is measured."""
    bodies = [
        json.dumps(
            {
                "id": f"evt_bench_{n:06d}",
                "object": "event",
                "type": "customer.updated",
                "created": int(time.time()),
                "data": {"object": {"id": f"cus_{n}", "object": "customer"}},
            }
        ).encode()
        for n in range(unique)
    ]
    burst = bodies + [rng.choice(bodies) for _ in range(duplicates)]
    rng.shuffle(burst)
    return burst


def _start(env: dict[str, str], port: int, logs: Path) -> list[subprocess.Popen]:
    processes = stack.start(
        {
            "web": [
                stack.PYTHON,
                "-m",
                "gunicorn",
                "portal.wsgi",
                "--workers",
                str(WEB_WORKERS),
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
            ],
            "worker": [
                stack.PYTHON,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "--queues",
                "billing",
                "--concurrency",
                "2",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
            ],
        },
        env,
        logs,
    )
    stack.wait_for(f"http://127.0.0.1:{port}/healthz", logs)
    return processes


def _post(session_for, url: str, body: bytes) -> tuple[int, float]:
    began = time.perf_counter()
    response = session_for().post(
        url,
        data=body,
        timeout=30,
        headers={"Content-Type": "application/json", "Stripe-Signature": _sign(body)},
    )
    return response.status_code, time.perf_counter() - began


def _unfinished() -> int:
    """Events not yet processed (no processing record yet, or one still pending)."""
    done = WebhookProcessing.objects.exclude(status=WebhookProcessing.Status.PENDING).count()
    return WebhookEvent.objects.count() - done


def run(*, db: Database, quick: bool, seed: int = 20_261_126) -> dict:
    url = db.url
    unique = 800 if quick else 4_000
    burst = _events(unique, unique // 4, random.Random(seed))  # duplicates are 20% of the burst
    scratch = Path(tempfile.mkdtemp(prefix="hb-bench-webhooks-"))
    port = stack.free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.local",
        "DJANGO_DEBUG": "false",
        "DATABASE_URL": url,
        "CACHE_URL": "locmemcache://",
        # Redis, as in production; its own database number, emptied first.
        "CELERY_BROKER_URL": BROKER_URL,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
    }
    progress(
        f"gunicorn ({WEB_WORKERS} workers), a worker; {len(burst):,} events, {CONCURRENCY} senders"
    )
    import redis

    redis.Redis.from_url(BROKER_URL).flushdb()
    processes = _start(env, port, scratch)
    try:
        sessions: dict[int, requests.Session] = {}

        def session_for() -> requests.Session:
            import threading

            return sessions.setdefault(threading.get_ident(), requests.Session())

        target = f"http://127.0.0.1:{port}/stripe/webhook/"
        with ThreadPoolExecutor(max_workers=WEB_WORKERS) as pool:  # every worker warm
            list(
                pool.map(
                    lambda _: session_for().get(target.replace("stripe/webhook/", "healthz")),
                    range(WEB_WORKERS * 10),
                )
            )
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            answers = list(pool.map(lambda body: _post(session_for, target, body), burst))
        wall = time.perf_counter() - began
        progress("waiting for the worker to process every event")
        deadline = time.monotonic() + 300
        while _unfinished() and time.monotonic() < deadline:
            time.sleep(0.5)
        processed_in = time.perf_counter() - began
    finally:
        stack.stop(processes)
        shutil.rmtree(scratch, ignore_errors=True)
    statuses: dict[int, int] = {}
    for status, _ in answers:
        statuses[status] = statuses.get(status, 0) + 1
    latencies = [seconds for _, seconds in answers]
    attempts = list(WebhookProcessing.objects.values_list("attempts", flat=True))
    summary = summarize_ms(latencies)
    return {
        "events_sent": len(burst),
        "unique_events": unique,
        "duplicates_sent": len(burst) - unique,
        "web_workers": WEB_WORKERS,
        "senders": CONCURRENCY,
        "http_statuses": statuses,
        "acknowledged_per_second": round(len(burst) / wall, 1),
        "ack_latency_ms": summary,
        "stored_events": WebhookEvent.objects.count(),
        "processed_exactly_once": len(attempts) == unique and set(attempts) == {1},
        "still_pending": _unfinished(),
        "seconds_until_all_processed": round(processed_in, 1),
        "target_p99_ms": TARGET_P99_MS,
        "passed": summary["p99"] < TARGET_P99_MS,
    }
