"""The payment-to-active benchmark, run in a process whose Django is set up on the bench
database; the web server, the worker and localstripe are separate processes."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import redis
from django.conf import settings
from django.utils import timezone

from billing import gateway
from billing.models import Payment
from billing.services import accounts
from capacity import services as capacity_services
from capacity.models import Reservation
from capacity.windows import Window
from core.money import to_minor

from . import fixtures, stack
from ._webhooks import SECRET as WEBHOOK_SECRET
from .database import Database, progress
from .stats import summarize_ms

SECRET_KEY = stack.STRIPE_KEY
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")
TARGET_P95_S = 3.0


def _start(
    env: dict[str, str], web_port: int, stripe_port: int, logs: Path
) -> list[subprocess.Popen]:
    processes = stack.start(
        {
            "stripe": stack.localstripe(stripe_port),
            "web": stack.gunicorn(web_port),
            "worker": stack.celery_worker(),
        },
        env,
        logs,
    )
    stack.wait_for(f"http://127.0.0.1:{web_port}/healthz", logs)
    stack.wait_for(f"http://127.0.0.1:{stripe_port}/v1/customers", logs, auth=(SECRET_KEY, ""))
    return processes


def _charged(reservation: Reservation, api: str) -> Payment:
    """Stripe takes the money (the card form did its part); our app has not heard yet."""
    card = stack.card(api)
    payment = Payment.objects.create(
        organization=reservation.organization,
        reservation=reservation,
        attempt_token="bench",
        amount=reservation.total,
        currency=reservation.currency,
    )
    account = accounts.billing_account_ensure(reservation.organization)
    intent = gateway.payment_intent_create(
        amount_minor=to_minor(reservation.total, reservation.currency),
        currency=reservation.currency,
        customer_id=account.stripe_customer_id,
        metadata={"payment": payment.public_id},
        idempotency_key=f"payment:{payment.public_id}",
        payment_method_id=card,
    )
    Payment.objects.filter(pk=payment.pk).update(stripe_payment_intent_id=intent.id)
    payment.stripe_payment_intent_id = intent.id
    return payment


def _webhook(intent_id: str, n: int) -> bytes:
    return json.dumps(
        {
            "id": f"evt_bench_paid_{n:05d}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "created": int(time.time()),
            "data": {"object": {"id": intent_id, "object": "payment_intent"}},
        }
    ).encode()


def run(*, db: Database, quick: bool) -> dict:
    url = db.url
    count = 40 if quick else 200
    scratch = Path(tempfile.mkdtemp(prefix="hb-bench-provisioning-"))
    web_port, stripe_port = stack.free_port(), stack.free_port()
    api = f"http://127.0.0.1:{stripe_port}"
    settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE = SECRET_KEY, api
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.local",
        "DJANGO_DEBUG": "false",
        "DATABASE_URL": url,
        "CACHE_URL": "locmemcache://",
        "CELERY_BROKER_URL": BROKER_URL,
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_API_BASE": api,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PROVISIONING_SIMULATED_LATENCY": "0",
        "PROVISIONING_SIMULATED_FAILURE_RATE": "0",
        "LOG_LEVEL": "WARNING",
    }
    gpu_models, regions = fixtures.load_catalog(gpu_models=1, regions=1)
    (pool,) = fixtures.load_pools(gpu_models, regions, clusters_per_pool=2)
    fixtures.load_nodes(pool.clusters, count + 10)
    organization, owner = fixtures.verified_owner("bench-provisioning")
    redis.Redis.from_url(BROKER_URL).flushdb()
    progress(f"gunicorn, a worker and localstripe; {count} reservations paid one after another")
    processes = _start(env, web_port, stripe_port, scratch)
    latencies, outcomes = [], {"active": 0, "timed_out": 0}
    try:
        for n in range(count):
            now = timezone.now().replace(second=0, microsecond=0)
            reservation = capacity_services.reservation_create(
                organization=organization,
                user=owner,
                gpu_model=pool.gpu_model,
                region=pool.region,
                node_count=1,
                window=Window(now, now + timedelta(hours=1), starts_on_payment=True),
            )
            payment = _charged(reservation, api)
            body = _webhook(payment.stripe_payment_intent_id, n)
            began = time.perf_counter()
            stack.deliver_webhook(f"http://127.0.0.1:{web_port}", body, WEBHOOK_SECRET)
            state = Reservation.objects.filter(pk=reservation.pk)
            deadline = time.monotonic() + 30
            while not state.filter(state=Reservation.State.ACTIVE).exists():
                if time.monotonic() > deadline:
                    outcomes["timed_out"] += 1
                    break
                time.sleep(0.01)
            else:
                outcomes["active"] += 1
                latencies.append(time.perf_counter() - began)
    finally:
        stack.stop(processes)
        shutil.rmtree(scratch, ignore_errors=True)
    summary = summarize_ms(latencies)
    return {
        "reservations": count,
        "outcomes": outcomes,
        "webhook_to_active_ms": summary,
        "target_p95_ms": TARGET_P95_S * 1000,
        "passed": outcomes["timed_out"] == 0 and summary.get("p95", 1e9) < TARGET_P95_S * 1000,
    }
