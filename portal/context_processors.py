from django.conf import settings
from django.http import HttpRequest

from accounts import selectors
from accounts.permissions import Permission, can


def navigation(request: HttpRequest) -> dict:
    """The organization switcher and the current organization for the shell."""
    context: dict = {"site_name": settings.SITE_NAME, "support_email": settings.SUPPORT_EMAIL}
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        context["nav_memberships"] = selectors.memberships_for_user(user)
        organization = getattr(request, "organization", None)
        context["current_organization"] = organization
        if organization is not None and not organization.is_active:
            # The banner adds its own full stop.
            context["suspended_reason"] = organization.suspended_reason.strip().rstrip(".")
        membership = getattr(request, "membership", None)
        context["current_membership"] = membership
        context["nav_billing"] = membership is not None and can(
            membership.role, Permission.VIEW_BILLING
        )
    return context
