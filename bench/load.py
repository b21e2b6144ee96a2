"""Mixed load test: `python -m bench.load [--duration 300] [--users 20]` (PostgreSQL, Redis).

Customers browse the portal, API clients reserve, pay and cancel, and Stripe's webhooks come in
(with repeats and types the app ignores), against gunicorn (2 workers), a Celery worker and
beat on Redis, and localstripe, for `--duration` seconds. Reports throughput, p50/p99 per
endpoint and errors, then checks that no node was sold twice, every paid reservation is
confirmed (or refunded as its cancellation says), every webhook event was processed exactly
once, the ledger balances with the payments and with Stripe, and `check_books` finds no
difference between the ledger and Stripe.
"""

import argparse
import json
from pathlib import Path

from .database import prepared

QUICK_SECONDS, QUICK_USERS = 60, 12


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=int, default=300, help="seconds of load (300)")
    parser.add_argument("--users", type=int, default=20, help="simulated users (20)")
    parser.add_argument(
        "--orgs", type=int, help="customer organizations (default: one per 4 users, at least 4)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SECONDS} s with {QUICK_USERS} users"
    )
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    duration, users = (QUICK_SECONDS, QUICK_USERS) if args.quick else (args.duration, args.users)
    if duration < 10 or users < 2:
        parser.error("run at least 10 seconds with at least 2 users")
    orgs = args.orgs or max(4, users // 4)
    with prepared("postgres") as db:
        from . import _load  # imports models: only once Django is set up

        result = {
            "database": "postgres",
            **_load.run(db=db, duration=duration, users=users, orgs=orgs),
        }
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
