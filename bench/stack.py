"""Starting the app's own processes (gunicorn, a Celery worker, localstripe) for a benchmark,
on loopback, with their logs in a scratch folder; and signing webhook bodies like Stripe."""

import hashlib
import hmac
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# localstripe takes any key that starts with sk_test_.
STRIPE_KEY = "sk_test_bench_only"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    commands: dict[str, list[str]], env: dict[str, str], logs: Path
) -> list[subprocess.Popen]:
    processes = []
    for name, command in commands.items():
        with (logs / f"{name}.log").open("w") as log:  # the child keeps its own copy
            processes.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
    return processes


def wait_for(url: str, logs: Path, auth: tuple[str, str] | None = None) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(url, timeout=1, auth=auth)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer; logs in {logs}") from None
            time.sleep(0.2)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=30)


def sign(body: bytes, secret: str) -> str:
    """A Stripe-Signature header for `body`, as Stripe computes it."""
    timestamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def deliver_webhook(web: str, body: bytes, secret: str) -> None:
    """POST a Stripe event to the app's webhook endpoint at `web`, signed as Stripe signs."""
    requests.post(
        f"{web}/stripe/webhook/",
        data=body,
        timeout=30,
        headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, secret)},
    ).raise_for_status()


# --- The app's processes, as `make run` starts them (loopback only) ---------------------------
def gunicorn(port: int, workers: int = 2) -> list[str]:
    return [
        PYTHON,
        "-m",
        "gunicorn",
        "portal.wsgi",
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ]


def celery_worker(concurrency: int = 2, queues: str | None = None) -> list[str]:
    """A worker on every queue unless `queues` names some (comma-separated)."""
    return [
        PYTHON,
        "-m",
        "celery",
        "-A",
        "portal",
        "worker",
        *(["--queues", queues] if queues else []),
        "--concurrency",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "WARNING",
    ]


def celery_beat(schedule: Path) -> list[str]:
    """Beat with its schedule file in the run's scratch folder, never the developer's var/."""
    return [
        PYTHON,
        "-m",
        "celery",
        "-A",
        "portal",
        "beat",
        "--schedule",
        str(schedule),
        "--loglevel",
        "WARNING",
    ]


def localstripe(port: int) -> list[str]:
    """The Stripe emulator on 127.0.0.1, its state in memory (billing/localstripe_server.py)."""
    return [PYTHON, "-m", "billing.localstripe_server", "--port", str(port)]


def card(api: str) -> str:
    """A Visa card PaymentMethod on the Stripe emulator, made as Stripe.js makes one."""
    return requests.post(
        f"{api}/v1/payment_methods",
        data={
            "type": "card",
            "card[number]": "4242424242424242",
            "card[exp_month]": "12",
            "card[exp_year]": "2034",
            "card[cvc]": "123",
        },
        auth=(STRIPE_KEY, ""),
        timeout=10,
    ).json()["id"]
