"""Reservation throughput benchmark: `python -m bench.throughput` (PostgreSQL only).

SQLite serializes every writer on one database lock, so concurrent throughput is measured on
PostgreSQL, where the pool lock and the exclusion constraint are what keep customers apart.
Writes its result as JSON to --out (the parent, `python -m bench`, collects it).
"""

import argparse
import json
from pathlib import Path

from . import database


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput")
    parser.add_argument("--quick", action="store_true", help="5 seconds instead of 20")
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    with database.prepared("postgres") as db:
        from . import _throughput  # imports models: only once Django is set up

        result = {
            "database": "postgres",
            "db_options": db.options,
            **_throughput.run(quick=args.quick),
        }
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
