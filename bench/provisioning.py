"""Payment-to-active benchmark: `python -m bench.provisioning` (PostgreSQL, Redis).

The `make run` stack (gunicorn, a Celery worker, localstripe) with the simulated driver at zero
latency: for each of 200 reservations Stripe charges the card, its signed
`payment_intent.succeeded` webhook reaches the portal, and the clock runs until the
reservation is active.
"""

import argparse
import json
from pathlib import Path

from . import database


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.provisioning")
    parser.add_argument("--quick", action="store_true", help="40 reservations instead of 200")
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    with database.prepared("postgres") as db:
        from . import _provisioning  # imports models: only once Django is set up

        result = {"database": "postgres", **_provisioning.run(url=db.url, quick=args.quick)}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
