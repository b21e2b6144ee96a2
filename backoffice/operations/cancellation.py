"""Staff cancellation from the reservations' admin: the policy's refund, or a full one.

Both are shares of what the customer actually paid (capacity.operations.refund_calculate). A
full refund above the policy is finance's to give (CANCELLATION_REFUND_PERMISSION): the page
says so on each row, the form refuses it, and the service checks it again.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from backoffice.actor import staff_actor
from capacity import operations
from capacity.models import Reservation
from core.staff import StaffReasonForm, staff_may

from .common import OperationsMixin, Section, bound_form, reservation_link, window_text

S = Reservation.State


class CancelForm(StaffReasonForm):
    refund = forms.ChoiceField(
        label="Refund",
        choices=operations.RefundBasis.choices,
        initial=operations.RefundBasis.POLICY,
        widget=forms.RadioSelect,
    )
    field_order = ["refund", "reason"]


@dataclass(frozen=True)
class CancelRefunds:
    """What canceling one reservation now would give back, by each basis."""

    policy: Decimal | None
    percent: int | None
    full: Decimal | None

    @property
    def above_policy(self) -> bool:
        return self.full is not None and self.policy is not None and self.full > self.policy


def cancel_refunds(reservation: Reservation, now: datetime) -> CancelRefunds:
    policy, percent = operations.refund_calculate(reservation, operations.RefundBasis.POLICY, now)
    full, _ = operations.refund_calculate(reservation, operations.RefundBasis.FULL, now)
    return CancelRefunds(policy=policy, percent=percent, full=full)


class CancelAction(OperationsMixin):
    """The "Cancel with refund…" action of ReservationAdmin, and the rows its actions list."""

    def _rows(self, reservations: list[Reservation], extra: Callable[[Reservation], list]) -> list:
        return [
            [
                reservation_link(r),
                r.organization.name,
                r.get_state_display(),
                window_text(r.starts_at, r.ends_at),
                *extra(r),
            ]
            for r in reservations
        ]

    @admin.action(description="Cancel with refund…", permissions=["operate"])
    def cancel_with_refund(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        reservations = list(queryset.select_related("organization").order_by("starts_at", "pk"))
        now = timezone.now()
        refunds = {r.pk: cancel_refunds(r, now) for r in reservations}
        # A full refund above the policy is finance's to give (the service checks it too).
        may_exceed = staff_may(request.user, settings.CANCELLATION_REFUND_PERMISSION)
        above = [r.public_id for r in reservations if refunds[r.pk].above_policy]
        form = bound_form(CancelForm, request)
        if form.is_bound and form.is_valid():
            refund, reason = form.cleaned_data["refund"], form.cleaned_data["reason"]
            if refund == operations.RefundBasis.FULL and above and not may_exceed:
                form.add_error(
                    "refund",
                    "A full refund gives back more than the cancellation policy for "
                    f"{', '.join(above)}: that needs finance's refund permission. Choose the "
                    "policy refund, or ask finance.",
                )
            else:

                def cancel(r: Reservation) -> str:
                    canceled = operations.reservation_cancel(
                        reservation=r, actor=staff_actor(request), reason=reason, refund=refund
                    )
                    due = canceled.refund_due
                    return (
                        f"{r.public_id} (refund due {due} {r.currency.upper()})"
                        if due
                        else r.public_id
                    )

                self.run_each(request, reservations, cancel, done="Canceled")
                return None

        def columns(r: Reservation) -> list:
            if r.state not in operations.CANCELABLE:
                return [
                    "—",
                    "—",
                    "cannot be canceled" + (": release it instead" if r.state == S.ACTIVE else ""),
                ]
            row = refunds[r.pk]
            if row.policy is None:
                return ["nothing paid", "nothing paid", ""]
            note = "above the policy: needs finance" if row.above_policy and not may_exceed else ""
            return [f"{row.policy} ({row.percent} %)", f"{row.full}", note]

        return self.confirmation(
            request,
            reservations,
            action="cancel_with_refund",
            title="Cancel reservations",
            intro=(
                "The nodes are released at once, the customer is told by e-mail, and billing "
                "pays back the refund due: a share of what the customer actually paid (less "
                "refunds and credits). Held reservations have nothing to refund. A full refund "
                "above the policy needs finance's refund permission."
            ),
            form=form,
            sections=[
                Section(
                    title="Reservations",
                    headers=[
                        "Reservation",
                        "Organization",
                        "State",
                        "Window",
                        "Policy refund",
                        "Full refund",
                        "",
                    ],
                    rows=self._rows(reservations, columns),
                )
            ],
            submit="Cancel these reservations",
        )
