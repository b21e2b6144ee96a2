"""What a user typed into a form that stopped for the password re-check, kept for a few
minutes so the form comes back as they left it.

The stash lives in the session (so it is this browser's and this user's only), under one name
per form; it is read once, and ignored past FORM_STASH_MAX_AGE or for another user. Only the
fields a view names are kept, and never one whose name says it is a secret: passwords, tokens,
card data and the CSRF token stay out of the session whatever a view asks for.
"""

import re
from collections.abc import Iterable
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, QueryDict
from django.utils import timezone

SESSION_KEY = "form_stash"
DEFAULT_MAX_AGE = timedelta(minutes=5)
NEVER_KEPT = re.compile(r"password|secret|token|csrf|card|cvc|cvv|iban|otp", re.IGNORECASE)

Stash = dict[str, list[str]]


def max_age() -> timedelta:
    return getattr(settings, "FORM_STASH_MAX_AGE", DEFAULT_MAX_AGE)


def keepable(fields: Iterable[str]) -> list[str]:
    """The field names of `fields` a stash may hold."""
    return [name for name in fields if not NEVER_KEPT.search(name)]


def form_stash_save(
    request: HttpRequest, *, name: str, data: QueryDict, fields: Iterable[str]
) -> None:
    """Keep `fields` of the submitted `data` under `name` (the URL the form posts to),
    replacing an older stash of the same form and dropping every expired one."""
    user_id = getattr(request.user, "pk", None)
    if user_id is None:
        return
    now = timezone.now().timestamp()
    stashes = {
        key: entry
        for key, entry in _stashes(request).items()
        if now - entry.get("saved_at", 0) < max_age().total_seconds()
    }
    stashes[name] = {
        "user": user_id,
        "saved_at": now,
        "fields": {field: data.getlist(field) for field in keepable(fields)},
    }
    request.session[SESSION_KEY] = stashes


def form_stash_take(request: HttpRequest, *, name: str) -> Stash | None:
    """The fields stashed under `name`, removed from the session: None when there is none, it
    has expired, or another user stashed it."""
    stashes = _stashes(request)
    if name not in stashes:
        return None
    entry = stashes.pop(name)
    request.session[SESSION_KEY] = stashes
    age = timezone.now().timestamp() - entry.get("saved_at", 0)
    if entry.get("user") != getattr(request.user, "pk", None) or not (
        0 <= age < max_age().total_seconds()
    ):
        return None
    fields = entry.get("fields")
    if not isinstance(fields, dict):
        return None
    return {str(k): [str(v) for v in vs] for k, vs in fields.items() if isinstance(vs, list)}


def form_prefill(form: forms.Form, stash: Stash | None) -> forms.Form:
    """Set `form`'s initial values to the stashed ones, read by each field's own widget (so a
    set of checkboxes gets its list, a text box its one value, an unticked box nothing)."""
    if not stash:
        return form
    data = QueryDict(mutable=True)
    for key, posted in stash.items():
        data.setlist(key, posted)
    for field_name, field in form.fields.items():
        key = form.add_prefix(field_name)
        values = stash.get(key)
        # Every kept field is stashed, present or not: an empty list is a box left unticked.
        if values is None or (not values and not isinstance(field, forms.MultipleChoiceField)):
            continue
        form.initial[field_name] = field.widget.value_from_datadict(data, {}, key)
    return form


def form_restore(request: HttpRequest, form: forms.Form, *, name: str, button: str) -> bool:
    """Fill `form` in as it was posted to `name` before the password confirmation, if it was,
    and tell the user it was not sent yet. Says whether it did."""
    stash = form_stash_take(request, name=name)
    if stash is None:
        return False
    form_prefill(form, stash)
    messages.info(
        request, f"Password confirmed. The form is as you left it: check it and press {button}."
    )
    return True


def _stashes(request: HttpRequest) -> dict[str, dict]:
    value = request.session.get(SESSION_KEY)
    return dict(value) if isinstance(value, dict) else {}
