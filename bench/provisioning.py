"""Payment-to-active benchmark: `python -m bench.provisioning` (PostgreSQL, Redis).

The `make run` stack (gunicorn, a Celery worker, localstripe) with the simulated driver at zero
latency: for each of 200 reservations Stripe charges the card, its signed
`payment_intent.succeeded` webhook reaches the portal, and the clock runs until the
reservation is active.
"""

from .database import run_on_postgres


def main() -> None:
    run_on_postgres(
        "python -m bench.provisioning", "40 reservations instead of 200", "_provisioning"
    )


if __name__ == "__main__":
    main()
