"""Webhook intake benchmark: `python -m bench.webhooks` (PostgreSQL only).

A burst of signed Stripe events, a fifth of them duplicates, against gunicorn and a Celery
worker on Redis: how fast events are acknowledged, and whether every event was stored once and
processed exactly once.
"""

from .database import run_on_postgres


def main() -> None:
    run_on_postgres("python -m bench.webhooks", "1,000 events instead of 5,000", "_webhooks")


if __name__ == "__main__":
    main()
