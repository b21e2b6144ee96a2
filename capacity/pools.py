"""The pool lock: allocators of one pool (GPU model and region) queue on its cluster rows."""

from django.conf import settings
from django.db import OperationalError, connection

from core.errors import Conflict

from .models import Cluster


def pool_lock(clusters: list[Cluster]) -> None:
    """Serialize allocators of one pool: lock its cluster rows in pk order."""
    if not settings.CAPACITY_SERIALIZE_ALLOCATIONS or not clusters:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SET LOCAL lock_timeout = %s", [f"{settings.CAPACITY_LOCK_TIMEOUT_MS}ms"]
            )
    try:
        list(
            Cluster.objects.select_for_update()
            .filter(pk__in=[c.pk for c in clusters])
            .order_by("pk")
            .values_list("pk", flat=True)
        )
    except OperationalError as exc:  # lock_timeout: too many customers at once
        raise Conflict(
            "Capacity is in high demand right now; please try again in a moment.",
            code="busy",
        ) from exc
