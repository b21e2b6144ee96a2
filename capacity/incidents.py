"""Incidents for operations: one open incident per kind and object (a reservation, a node or
both), however often the same trouble is reported."""

from django.db import IntegrityError, transaction

from .models import Incident, Node, Reservation


def incident_open(
    *,
    kind: str,
    detail: str,
    reservation: Reservation | None = None,
    node: Node | None = None,
) -> tuple[Incident, bool]:
    """Open an incident of `kind` for the object, or return the one already open for it (its
    text left as first written). True when it was opened now. The database's constraint
    (one_open_incident_per_kind_and_object) settles a race between two reporters."""
    open_ = Incident.objects.filter(
        kind=kind, reservation=reservation, node=node, resolved_at__isnull=True
    )
    existing = open_.first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            return (
                Incident.objects.create(
                    kind=kind, reservation=reservation, node=node, detail=detail
                ),
                True,
            )
    except IntegrityError:
        existing = open_.first()
        if existing is None:
            raise
        return existing, False
