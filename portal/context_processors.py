from django.conf import settings
from django.http import HttpRequest

from accounts import selectors

from .navigation import nav_for


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
        if membership is not None:
            match = getattr(request, "resolver_match", None)
            context["nav_links"] = nav_for(membership, match.url_name if match else None)
    return context
