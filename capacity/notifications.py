"""E-mail to the customer as a reservation moves through its lifecycle."""

from django.urls import reverse

from accounts.emails import queue_email

from .models import Reservation

TEMPLATES = {
    Reservation.State.SCHEDULED: "reservation_scheduled",
    Reservation.State.ACTIVE: "reservation_active",
    Reservation.State.COMPLETED: "reservation_completed",
    Reservation.State.FAILED: "reservation_failed",
}


def notify(reservation: Reservation, template: str, **context: object) -> None:
    """Mail whoever made the reservation (else the billing address) after the commit."""
    to = (
        reservation.created_by.email
        if reservation.created_by
        else reservation.organization.billing_email
    )
    queue_email(
        to=to,
        template=template,
        context={
            "reservation": reservation,
            "url": reverse(
                "reservation-detail", args=[reservation.organization.slug, reservation.public_id]
            ),
            **context,
        },
    )
