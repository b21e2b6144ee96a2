"""`make run`: serve the portal with a Celery worker, beat and (without Stripe keys) localstripe.

All processes share one terminal with prefixed, coloured logs; Ctrl-C stops every one of them.
"""

import os
import sys

from honcho.manager import Manager
from honcho.printer import Printer

BANNER = """
  Hyperblock is starting on http://127.0.0.1:{port}/

  Customer sign-in:  demo@example.com / {password}
  Back office:       http://127.0.0.1:{port}/admin/  (admin@example.com / {password};
                     also sales@, ops@, finance@example.com)
  E-mail is printed below by the web and worker processes. Ctrl-C stops everything.
"""


def main() -> int:
    port = os.environ.get("PORT", "8000")
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.local")
    env.setdefault("SITE_URL", f"http://127.0.0.1:{port}")
    env["PYTHONUNBUFFERED"] = "1"
    python = sys.executable
    processes = {}
    if not env.get("STRIPE_SECRET_KEY"):
        stripe_port = env.get("LOCALSTRIPE_PORT", "8420")
        env["STRIPE_SECRET_KEY"] = "sk_test_localstripe"  # noqa: S105 - the emulator takes any
        env["STRIPE_PUBLISHABLE_KEY"] = "pk_test_localstripe"
        env["STRIPE_API_BASE"] = f"http://127.0.0.1:{stripe_port}"
        env.setdefault("STRIPE_WEBHOOK_SECRET", "whsec_localstripe_development")
        # localstripe signs and delivers its events to the portal, as Stripe would.
        processes["stripe"] = (
            f"{python} -m billing.localstripe_server --port {stripe_port}"
            " --state var/localstripe.pickle"
            f" --webhook-url http://127.0.0.1:{port}/stripe/webhook/"
            f" --webhook-secret {env['STRIPE_WEBHOOK_SECRET']}"
        )
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
