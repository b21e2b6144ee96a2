"""`manage.py check_books`: every difference between the ledger and Stripe; exit 1 if any."""

import json
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.gateway import PaymentError
from billing.services.books import books_check


class Command(BaseCommand):
    help = (
        "Compare each organization's ledger with Stripe (payments, refunds, invoices and credit "
        "notes where Stripe has them) and each reservation's money with what it was sold for. "
        "Prints one line per difference, tells finance once per difference, exits 1 if any "
        "(2 if Stripe could not be read)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument(
            "--quiet", action="store_true", help="print only the differences and the summary"
        )
        parser.add_argument(
            "--grace",
            type=int,
            default=None,
            metavar="SECONDS",
            help="leave money that moved this recently for the next run "
            "(default BOOKS_CHECK_GRACE_SECONDS; 0 checks everything)",
        )
        parser.add_argument(
            "--no-flags", action="store_true", help="report only; raise no finance flags"
        )

    def handle(self, *args: object, **options: object) -> None:
        grace = options["grace"]
        try:
            report = books_check(
                grace=timedelta(seconds=grace) if isinstance(grace, int) else None,
                raise_flags=not options["no_flags"],
            )
        except PaymentError as exc:  # exit 2: nothing was concluded, unlike 1
            raise CommandError(f"Stripe could not be read: {exc.message}", returncode=2) from exc
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            for difference in report.differences:
                self.stdout.write(difference.line())
            if not options["quiet"]:
                for note in report.unchecked:
                    self.stdout.write(f"not checked: {note}")
            self.stdout.write(report.summary())
        if report.differences:
            found = len(report.differences)
            raise CommandError(
                f"{found} difference{'s' * (found != 1)} between the books and Stripe.",
                returncode=1,
            )
