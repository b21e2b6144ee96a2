from django.http import HttpRequest


def axes_username(request: HttpRequest, credentials: dict | None = None) -> str:
    """Count sign-in failures per account, however the address is capitalised."""
    username = (credentials or {}).get("username") or request.POST.get("username") or ""
    return username.strip().lower()
