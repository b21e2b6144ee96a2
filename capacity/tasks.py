from celery import shared_task
from django.conf import settings

from . import provisioning, reminders, services
from .drivers import ConfigurationDriverError, PermanentDriverError, TransientDriverError


@shared_task(name="capacity.expire_holds")
def expire_holds() -> int:
    """Expire lapsed payment holds and free their nodes; safe to run twice."""
    return services.lapsed_holds_expire()


@shared_task(name="capacity.start_due")
def start_due() -> int:
    return provisioning.reservation_start_due()


@shared_task(name="capacity.end_due")
def end_due() -> int:
    return provisioning.reservation_end_due()


@shared_task(name="capacity.remind")
def remind() -> int:
    return reminders.reminders_send()


@shared_task(name="capacity.reconcile")
def reconcile() -> dict[str, int]:
    return provisioning.provisioning_reconcile()


def _backoff(attempt: int, cap: float = 600) -> int:
    return int(min(cap, 5 * 2**attempt))


def _retry_provisioning(reservation_id: int, attempt: int, exc: TransientDriverError) -> str:
    """Try again later, within the block's time budget: until its start plus
    PROVISIONING_GIVE_UP_AFTER_START (and at most PROVISIONING_MAX_RETRIES retries when that is
    set), with backoff capped at PROVISIONING_RETRY_MAX_BACKOFF. Operations hear of it once,
    when the retries reach PROVISIONING_ALERT_AFTER_RETRIES, or at once for an error of our
    own configuration."""
    if provisioning.provisioning_deadline_passed(reservation_id) or (
        settings.PROVISIONING_MAX_RETRIES is not None
        and attempt >= settings.PROVISIONING_MAX_RETRIES
    ):
        provisioning.provisioning_fail(reservation_id, f"{exc} (gave up after retries)")
        return "failed"
    if isinstance(exc, ConfigurationDriverError) or (
        attempt + 1 == settings.PROVISIONING_ALERT_AFTER_RETRIES
    ):
        provisioning.provisioning_delay_report(reservation_id, str(exc))
    provision.apply_async(
        kwargs={"reservation_id": reservation_id, "attempt": attempt + 1},
        countdown=_backoff(attempt, settings.PROVISIONING_RETRY_MAX_BACKOFF.total_seconds()),
    )
    return "retrying"


@shared_task(name="capacity.provision", acks_late=True, reject_on_worker_lost=True)
def provision(*, reservation_id: int, attempt: int = 0) -> str:
    """Provision; on a transient driver error try again later with backoff (a new message, so
    this one is acknowledged) until the block's time budget is spent, then give up (fail and
    refund); a permanent error gives up at once."""
    try:
        return provisioning.block_provision(reservation_id)
    except TransientDriverError as exc:
        return _retry_provisioning(reservation_id, attempt, exc)
    except PermanentDriverError as exc:
        provisioning.provisioning_fail(reservation_id, str(exc))
        return "failed"


@shared_task(name="capacity.release", acks_late=True, reject_on_worker_lost=True)
def release(*, reservation_id: int, attempt: int = 0) -> str:
    """Tear down; transient errors are retried for as long as it takes (the nodes must come
    back), and reconcile re-enqueues a release that stays stuck; a refusal opens an incident."""
    try:
        return provisioning.block_release(reservation_id)
    except TransientDriverError:
        release.apply_async(
            kwargs={"reservation_id": reservation_id, "attempt": attempt + 1},
            countdown=_backoff(min(attempt, 7)),
        )
        return "retrying"
    except PermanentDriverError as exc:
        # The block stays releasing (it has not let go); operations hear of it once, and
        # reconcile keeps trying in case whatever refused clears.
        provisioning.block_teardown_failure_report(reservation_id, str(exc))
        return "failed"


@shared_task(name="capacity.deprovision", acks_late=True, reject_on_worker_lost=True)
def deprovision(*, reservation_id: int, attempt: int = 0) -> str:
    """Tear down a canceled or failed block (or a leftover reconcile found); idempotent, with
    the same key every time. Transient errors are retried with backoff (a leftover backend
    reservation would refuse the next customer on those nodes); after
    PROVISIONING_TEARDOWN_RETRIES, or on a refusal, an incident tells operations, and
    reconcile's leftover sweep keeps trying where the driver can list its blocks."""
    try:
        return provisioning.block_teardown(reservation_id)
    except TransientDriverError as exc:
        if attempt >= settings.PROVISIONING_TEARDOWN_RETRIES:
            provisioning.block_teardown_failure_report(
                reservation_id, f"{exc} (gave up after retries)"
            )
            return "failed"
        deprovision.apply_async(
            kwargs={"reservation_id": reservation_id, "attempt": attempt + 1},
            countdown=_backoff(min(attempt, 7)),
        )
        return "retrying"
    except PermanentDriverError as exc:
        provisioning.block_teardown_failure_report(reservation_id, str(exc))
        return "failed"


@shared_task(name="capacity.sync_block", acks_late=True, reject_on_worker_lost=True)
def sync_block(*, reservation_id: int, attempt: int = 0) -> str:
    """Make a running block's backend match its end and nodes (after an extension or a node
    swap); transient errors are retried with backoff, a refusal opens an incident."""
    try:
        return provisioning.block_sync(reservation_id)
    except TransientDriverError as exc:
        if attempt >= (settings.PROVISIONING_MAX_RETRIES or settings.PROVISIONING_SYNC_RETRIES):
            provisioning.block_sync_failure_report(reservation_id, f"{exc} (gave up after retries)")
            return "failed"
        sync_block.apply_async(
            kwargs={"reservation_id": reservation_id, "attempt": attempt + 1},
            countdown=_backoff(attempt, settings.PROVISIONING_RETRY_MAX_BACKOFF.total_seconds()),
        )
        return "retrying"
    except PermanentDriverError as exc:
        provisioning.block_sync_failure_report(reservation_id, str(exc))
        return "failed"
