from celery import shared_task

from . import services


@shared_task(name="capacity.expire_holds")
def expire_holds() -> int:
    """Expire lapsed payment holds and free their nodes; safe to run twice."""
    return services.expire_lapsed_holds()
