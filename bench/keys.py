"""Key verification benchmark: `python -m bench.keys` (PostgreSQL).

The cost of authenticating one request with our API keys, beside djangorestframework-api-key's
HasAPIKey on the same request and data: median and p99 per request, and database queries.
"""

from .database import run_on_postgres


def main() -> None:
    run_on_postgres("python -m bench.keys", "fewer iterations", "_keys")


if __name__ == "__main__":
    main()
