"""E-mail to the customer as a reservation moves through its lifecycle."""

from django.urls import reverse

from core.emails import queue_email

from .models import Reservation

TEMPLATES = {
    Reservation.State.SCHEDULED: "reservation_scheduled",
    Reservation.State.ACTIVE: "reservation_active",
    Reservation.State.COMPLETED: "reservation_completed",
    Reservation.State.FAILED: "reservation_failed",
}


def quote_notification_send(reservation: Reservation) -> None:
    """Tell the organization's owners and billing address that sales made them a quote."""
    from accounts.models import Membership
    from accounts.permissions import Role

    organization = reservation.organization
    owners = Membership.objects.filter(organization=organization, role=Role.OWNER).values_list(
        "user__email", flat=True
    )
    url = reverse("reservation-detail", args=[organization.slug, reservation.public_id])
    for to in sorted({organization.billing_email, *owners}):
        queue_email(
            to=to,
            template="quote_created",
            context={"reservation": reservation, "organization": organization, "url": url},
        )


def notification_send(reservation: Reservation, template: str, **context: object) -> None:
    """Mail whoever made the reservation (else the billing address: also when a service key
    made it, whose identity has no mailbox) after the commit."""
    to = (
        reservation.created_by.email
        if reservation.created_by and not reservation.created_by.is_service
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
