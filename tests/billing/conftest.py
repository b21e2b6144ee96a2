"""Billing tests run against a real localstripe server on a free loopback port."""

import hashlib
import hmac
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.utils import timezone

from accounts.models import Organization
from billing import gateway
from billing.models import Payment
from billing.services import accounts
from capacity import services as capacity_services
from capacity.models import Reservation
from capacity.windows import Window, ceil_hour
from core.money import to_minor
from tests.capacity.conftest import Catalog, catalog, hours  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "sk_test_hyperblock_tests"
WEBHOOK_SECRET = "whsec_hyperblock_tests"
VISA = "4242424242424242"
DECLINED = "4000000000000341"  # attaches fine, the charge fails
THREE_D_SECURE = "4000002760003184"  # always asks for authentication


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "billing.localstripe_server", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("localstripe did not start") from None
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def stripe_api(localstripe_url: str, settings) -> str:
    """Point the gateway at a wiped localstripe for this test."""
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_hyperblock_tests"
    settings.STRIPE_API_BASE = localstripe_url
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    requests.delete(f"{localstripe_url}/_config/data", timeout=10).raise_for_status()
    return localstripe_url


def card(api: str, number: str = VISA) -> str:
    """A card PaymentMethod, made the way Stripe.js makes one in the browser."""
    response = requests.post(
        f"{api}/v1/payment_methods",
        data={
            "type": "card",
            "card[number]": number,
            "card[exp_month]": "12",
            "card[exp_year]": "2034",
            "card[cvc]": "123",
        },
        auth=(SECRET_KEY, ""),
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["id"]


def authenticate(api: str, client_secret: str, *, success: bool = True) -> None:
    """What Stripe.js does when the customer completes (or fails) 3-D Secure."""
    intent = client_secret.split("_secret_")[0]
    response = requests.post(
        f"{api}/v1/payment_intents/{intent}/_authenticate",
        params={"success": "true" if success else "false"},
        json={"key": "pk_test_hyperblock_tests", "client_secret": client_secret},
        timeout=10,
    )
    response.raise_for_status()


def signed(
    payload: dict | str, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[bytes, str]:
    """A webhook body and its Stripe-Signature header, as Stripe signs them."""
    body = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return body, f"t={timestamp},v1={digest}"


def event(event_id: str, event_type: str, object_id: str, obj: str = "payment_intent") -> dict:
    return {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "api_version": "2020-08-27",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {"id": object_id, "object": obj}},
    }


def held_reservation(
    org: Organization,
    user,
    pool: Catalog,
    nodes: int = 2,
    length: int = 24,
    start=None,
) -> Reservation:
    start = start or ceil_hour(timezone.now()) + hours(1)
    return capacity_services.reservation_create(
        organization=org,
        user=user,
        gpu_model=pool.h100,
        region=pool.east,
        node_count=nodes,
        window=Window(start, start + hours(length)),
    )


def stripe_charges(reservation: Reservation, method: str, attempt: str = "elsewhere") -> Payment:
    """A payment our app started whose charge Stripe completes without our app hearing back
    (the customer's browser closed): only Stripe's webhook, or a sync, can tell us."""
    payment = Payment.objects.create(
        organization=reservation.organization,
        reservation=reservation,
        attempt_token=attempt,
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
        payment_method_id=method,
    )
    Payment.objects.filter(pk=payment.pk).update(stripe_payment_intent_id=intent.id)
    payment.stripe_payment_intent_id = intent.id
    return payment
