from django.conf import settings
from django.http import HttpRequest

from accounts import selectors
from accounts.permissions import Permission, can


def navigation(request: HttpRequest) -> dict:
    """The organization switcher and the current organization for the shell."""
    context: dict = {"site_name": settings.SITE_NAME}
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        context["nav_memberships"] = selectors.memberships_for_user(user)
        context["current_organization"] = getattr(request, "organization", None)
        membership = getattr(request, "membership", None)
        context["current_membership"] = membership
        context["nav_billing"] = membership is not None and can(
            membership.role, Permission.VIEW_BILLING
        )
    return context
