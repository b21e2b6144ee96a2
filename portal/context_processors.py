from django.conf import settings
from django.http import HttpRequest

from accounts import selectors


def navigation(request: HttpRequest) -> dict:
    """The organization switcher and the current organization for the shell."""
    context: dict = {"site_name": settings.SITE_NAME}
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        context["nav_memberships"] = selectors.memberships_for_user(user)
        context["current_organization"] = getattr(request, "organization", None)
        context["current_membership"] = getattr(request, "membership", None)
    return context
