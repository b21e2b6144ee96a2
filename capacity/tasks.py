from celery import Task, shared_task
from django.conf import settings

from . import provisioning, services
from .drivers import PermanentDriverError, TransientDriverError


@shared_task(name="capacity.expire_holds")
def expire_holds() -> int:
    """Expire lapsed payment holds and free their nodes; safe to run twice."""
    return services.expire_lapsed_holds()


@shared_task(name="capacity.start_due")
def start_due() -> int:
    return provisioning.start_due()


@shared_task(name="capacity.end_due")
def end_due() -> int:
    return provisioning.end_due()


@shared_task(name="capacity.remind")
def remind() -> int:
    return provisioning.remind()


@shared_task(name="capacity.reconcile")
def reconcile() -> dict[str, int]:
    return provisioning.reconcile()


@shared_task(name="capacity.provision", bind=True, acks_late=True, reject_on_worker_lost=True)
def provision(self: Task, *, reservation_id: int) -> str:
    """Provision with exponential backoff on transient driver errors only; give up (fail and
    refund) after PROVISIONING_MAX_RETRIES or on a permanent error."""
    try:
        return provisioning.provision(reservation_id)
    except TransientDriverError as exc:
        if self.request.retries >= settings.PROVISIONING_MAX_RETRIES:
            provisioning.provisioning_failed(reservation_id, f"{exc} (gave up after retries)")
            return "failed"
        raise self.retry(exc=exc, countdown=min(600, 5 * 2**self.request.retries)) from exc
    except PermanentDriverError as exc:
        provisioning.provisioning_failed(reservation_id, str(exc))
        return "failed"


@shared_task(name="capacity.release", bind=True, acks_late=True, reject_on_worker_lost=True)
def release(self: Task, *, reservation_id: int) -> str:
    try:
        return provisioning.release(reservation_id)
    except TransientDriverError as exc:
        raise self.retry(
            exc=exc, countdown=min(600, 5 * 2**self.request.retries), max_retries=20
        ) from exc
