"""Webhook intake benchmark: `python -m bench.webhooks` (PostgreSQL only).

A burst of signed Stripe events, a fifth of them duplicates, against gunicorn and a Celery
worker on Redis: how fast events are acknowledged, and whether every event was stored once and
processed exactly once.
"""

import argparse
import json
from pathlib import Path

from . import database


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks")
    parser.add_argument("--quick", action="store_true", help="1,000 events instead of 5,000")
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    with database.prepared("postgres") as db:
        from . import _webhooks  # imports models: only once Django is set up

        result = {"database": "postgres", **_webhooks.run(url=db.url, quick=args.quick)}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
