"""`make run`: serve the portal with a Celery worker, beat and (without Stripe keys) localstripe.

The demo data is seeded first (`manage.py seed_demo`), against the same Stripe.

All processes share one terminal with prefixed, coloured logs; Ctrl-C stops every one of them.
"""

import os
import shlex
import socket
import subprocess
import sys
import time

from honcho.manager import Manager
from honcho.printer import Printer

BANNER = """
  Hyperblock is starting on http://127.0.0.1:{port}/

  Customer sign-in:  demo@example.com / {password}
  Back office:       http://127.0.0.1:{port}/admin/  (admin@example.com / {password};
                     also sales@, ops@, finance@example.com)
  E-mail is printed below by the web and worker processes. Ctrl-C stops everything.
"""


def seed(python: str, env: dict[str, str], stripe: str | None, stripe_port: int) -> int:
    """`manage.py seed_demo` against the Stripe the processes will use, so the demo's
    invoice-terms customer gets its invoices: our localstripe is started for it (on the same
    state file, without webhooks: the portal is not up yet) and stopped again after."""
    command = [python, "manage.py", "seed_demo"]
    if stripe is None:
        return subprocess.call(command, env=env)  # noqa: S603 - our interpreter, our command
    emulator = subprocess.Popen(  # noqa: S603 - the command is built above from our paths
        shlex.split(stripe), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", stripe_port), timeout=0.5).close()
                break
            except OSError:
                if emulator.poll() is not None or time.monotonic() > deadline:
                    print("localstripe did not start; seeding without it.", file=sys.stderr)
                    env = {**env, "STRIPE_SECRET_KEY": ""}
                    break
                time.sleep(0.1)
        return subprocess.call(command, env=env)  # noqa: S603 - our interpreter, our command
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


def main() -> int:
    port = os.environ.get("PORT", "8000")
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.local")
    env.setdefault("SITE_URL", f"http://127.0.0.1:{port}")
    env["PYTHONUNBUFFERED"] = "1"
    python = sys.executable
    processes = {}
    stripe_port = env.get("LOCALSTRIPE_PORT", "8420")
    seeding_stripe = None
    if not env.get("STRIPE_SECRET_KEY"):
        env["STRIPE_SECRET_KEY"] = "sk_test_localstripe"  # noqa: S105 - the emulator takes any
        env["STRIPE_PUBLISHABLE_KEY"] = "pk_test_localstripe"
        env["STRIPE_API_BASE"] = f"http://127.0.0.1:{stripe_port}"
        env.setdefault("STRIPE_WEBHOOK_SECRET", "whsec_localstripe_development")
        seeding_stripe = (
            f"{python} -m billing.localstripe_server --port {stripe_port}"
            " --state var/localstripe.pickle"
        )
        # localstripe signs and delivers its events to the portal, as Stripe would.
        processes["stripe"] = (
            f"{seeding_stripe} --webhook-url http://127.0.0.1:{port}/stripe/webhook/"
            f" --webhook-secret {env['STRIPE_WEBHOOK_SECRET']}"
        )
    if seed(python, env, seeding_stripe, int(stripe_port)) != 0:
        return 1
    processes["web"] = f"{python} manage.py runserver 127.0.0.1:{port}"
    processes["worker"] = f"{python} -m celery -A portal worker --loglevel INFO --concurrency 2"
    processes["beat"] = f"{python} -m celery -A portal beat --loglevel INFO"

    password = env.get("DEMO_PASSWORD") or "hyperblock-demo"
    print(BANNER.format(port=port, password=password), flush=True)
    manager = Manager(Printer(sys.stdout))
    for name, command in processes.items():
        manager.add_process(name, command, env=env)
    manager.loop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
