"""A person's own account: profile, password change, old sign-in failures."""

from axes.models import AccessAttempt
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import audit
from core.errors import ServiceError

from ..api_keys import api_keys_revoke_for_maker
from ..models import User


@transaction.atomic
def profile_update(*, user: User, full_name: str) -> User:
    full_name = full_name.strip()
    if len(full_name) > 150:
        raise ServiceError("Use at most 150 characters for your name.", param="full_name")
    if user.full_name != full_name:
        audit.record(
            action="user.profile_updated",
            actor=user,
            target=user,
            data={"changes": {"full_name": [user.full_name, full_name]}},
        )
        user.full_name = full_name
        user.save(update_fields=["full_name"])
    return user


def password_change_record(*, user: User) -> None:
    audit.record(action="user.password_changed", actor=user, target=user)


def login_attempts_clean() -> int:
    threshold = timezone.now() - settings.AXES_COOLOFF_TIME
    deleted, _ = AccessAttempt.objects.filter(attempt_time__lt=threshold).delete()
    return deleted


@transaction.atomic
def user_deactivate(*, user: User, actor: User | None, reason: str = "") -> User:
    """Deactivate a person and revoke, permanently, every key they made. (A deactivation that
    bypasses this, a plain save(), still stops the keys: the key cache checks the maker.)"""
    locked = User.objects.select_for_update().get(pk=user.pk)
    if locked.is_active:
        locked.is_active = False
        locked.save(update_fields=["is_active"])
        audit.record(action="user.deactivated", actor=actor, target=locked, reason=reason)
    api_keys_revoke_for_maker(user=locked, actor=actor, reason="user.deactivated")
    return locked
