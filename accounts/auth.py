from django.http import HttpRequest


def axes_username(request: HttpRequest, credentials: dict | None = None) -> str:
    """Count password failures per account, however the address is capitalised.

    `authenticate(username=...)` reports failures under `username`, while axes' own backend asks
    whether an account is locked under the user model's USERNAME_FIELD (`email`); reading only
    the first let a locked account through wherever the form has no `username` field (the
    password confirmation, the password change)."""
    credentials = credentials or {}
    username = (
        credentials.get("username") or credentials.get("email") or request.POST.get("username")
    )
    return (username or "").strip().lower()
