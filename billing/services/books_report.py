"""What the books check found: each difference, and the report of a run (billing.services.books)."""

from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from core.money import format_money


@dataclass(frozen=True)
class Difference:
    """One thing where the books and Stripe (or the books and what was sold) disagree."""

    organization: str
    # "payment pi_...", "refund re_... of pi_...", "invoice in_...", "reservation rsv_..."
    subject: str
    what: str
    ours: Decimal
    theirs: Decimal
    currency: str
    key: str  # the finance flag's object id: one flag per difference
    ours_label: str = "ledger"
    theirs_label: str = "Stripe"
    note: str = ""

    def line(self) -> str:
        text = (
            f"{self.organization}: {self.subject}: {self.what}: "
            f"{self.ours_label} {format_money(self.ours, self.currency)}, "
            f"{self.theirs_label} {format_money(self.theirs, self.currency)}"
        )
        return f"{text} ({self.note})" if self.note else text


@dataclass
class BooksReport:
    differences: list[Difference] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # what could not be checked, and why
    organizations: int = 0
    payment_intents: int = 0
    refunds: int = 0
    invoices: int = 0
    reservations: int = 0
    too_recent: int = 0  # left for the next run (moved within the grace period)
    flags_raised: int = 0

    def add(
        self,
        organization: str,
        subject: str,
        what: str,
        ours: Decimal,
        theirs: Decimal,
        currency: str,
        key: str,
        **labels: str,  # ours_label, theirs_label, note
    ) -> None:
        self.differences.append(
            Difference(organization, subject, what, ours, theirs, currency, key, **labels)
        )

    def summary(self) -> str:
        found = len(self.differences)
        verdict = "the books agree with Stripe" if not found else count_noun(found, "difference")
        return (
            f"check_books: {verdict}; checked {count_noun(self.organizations, 'organization')}, "
            f"{count_noun(self.payment_intents, 'payment')}, {count_noun(self.refunds, 'refund')}, "
            f"{count_noun(self.invoices, 'invoice')} with Stripe and "
            f"{count_noun(self.reservations, 'reservation')}; {self.too_recent} left for the next "
            f"run (too recent); {count_noun(self.flags_raised, 'new finance flag')}"
        )

    def as_dict(self) -> dict[str, Any]:
        """For JSON (amounts as strings): every field, each difference's too, and the summary."""
        differences = [{k: str(v) for k, v in asdict(d).items()} for d in self.differences]
        return {**asdict(self), "differences": differences, "summary": self.summary()}


def count_noun(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"
