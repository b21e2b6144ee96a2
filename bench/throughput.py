"""Reservation throughput benchmark: `python -m bench.throughput` (PostgreSQL only).

SQLite serializes every writer on one database lock, so concurrent throughput is measured on
PostgreSQL, where the pool lock and the exclusion constraint are what keep customers apart.
Writes its result as JSON to --out (the parent, `python -m bench`, collects it).
"""

from .database import run_on_postgres


def main() -> None:
    run_on_postgres("python -m bench.throughput", "5 seconds instead of 20", "_throughput")


if __name__ == "__main__":
    main()
