"""API benchmarks: `python -m bench.api` (PostgreSQL).

- Authenticated reservation list (20 items) under gunicorn with 2 workers, requests per second
  and p99, against a bare Django JSON view (/healthz) in the same run: the ceiling.
- Usage ingestion: events per second through POST /api/v1/usage/ in batches of 1,000.
"""

from .database import run_on_postgres


def main() -> None:
    run_on_postgres("python -m bench.api", "shorter runs", "_api")


if __name__ == "__main__":
    main()
