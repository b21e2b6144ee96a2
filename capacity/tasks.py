from celery import shared_task
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


def _backoff(attempt: int) -> int:
    return min(600, 5 * 2**attempt)


@shared_task(name="capacity.provision", acks_late=True, reject_on_worker_lost=True)
def provision(*, reservation_id: int, attempt: int = 0) -> str:
    """Provision; on a transient driver error try again later with exponential backoff (a new
    message, so this one is acknowledged), and give up (fail and refund) after
    PROVISIONING_MAX_RETRIES retries or at once on a permanent error."""
    try:
        return provisioning.provision(reservation_id)
    except TransientDriverError as exc:
        if attempt >= settings.PROVISIONING_MAX_RETRIES:
            provisioning.provisioning_failed(reservation_id, f"{exc} (gave up after retries)")
            return "failed"
        provision.apply_async(
            kwargs={"reservation_id": reservation_id, "attempt": attempt + 1},
            countdown=_backoff(attempt),
        )
        return "retrying"
    except PermanentDriverError as exc:
        provisioning.provisioning_failed(reservation_id, str(exc))
        return "failed"


@shared_task(name="capacity.release", acks_late=True, reject_on_worker_lost=True)
def release(*, reservation_id: int, attempt: int = 0) -> str:
    """Tear down; transient errors are retried for as long as it takes (the nodes must come
    back), and reconcile re-enqueues a release that stays stuck."""
    try:
        return provisioning.release(reservation_id)
    except TransientDriverError:
        release.apply_async(
            kwargs={"reservation_id": reservation_id, "attempt": attempt + 1},
            countdown=_backoff(min(attempt, 7)),
        )
        return "retrying"


@shared_task(name="capacity.sync_block", acks_late=True, reject_on_worker_lost=True)
def sync_block(*, reservation_id: int, attempt: int = 0) -> str:
    """Make a running block's backend match its end and nodes (after an extension or a node
    swap); transient errors are retried with backoff, a refusal opens an incident."""
    try:
        return provisioning.sync_block(reservation_id)
    except TransientDriverError as exc:
        if attempt >= settings.PROVISIONING_MAX_RETRIES:
            provisioning.sync_failed(reservation_id, f"{exc} (gave up after retries)")
            return "failed"
        sync_block.apply_async(
            kwargs={"reservation_id": reservation_id, "attempt": attempt + 1},
            countdown=_backoff(attempt),
        )
        return "retrying"
    except PermanentDriverError as exc:
        provisioning.sync_failed(reservation_id, str(exc))
        return "failed"
