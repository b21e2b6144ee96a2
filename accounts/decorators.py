from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from . import selectors
from .permissions import PERMISSION_LABELS, Permission, can

View = Callable[..., HttpResponse]


def org_member(permission: Permission | None = None) -> Callable[[View], View]:
    """Resolve /o/<slug>/ to the user's membership, or 404 for anyone who is not a member.

    Sets `request.organization` and `request.membership`. When `permission` is given and the
    member's role lacks it, answers 403 with a page that says what the role cannot do.
    """

    def decorator(view: View) -> View:
        @login_required
        @wraps(view)
        def wrapper(
            request: HttpRequest, slug: str, *args: object, **kwargs: object
        ) -> HttpResponse:
            membership = selectors.membership_for(user=request.user, slug=slug)
            if membership is None:
                raise Http404("No such organization.")
            request.organization = membership.organization
            request.membership = membership
            if request.session.get("organization") != slug:
                request.session["organization"] = slug
            if permission is not None and not can(membership.role, permission):
                return render(
                    request,
                    "403.html",
                    {
                        "message": (
                            f"Your role ({membership.get_role_display().lower()}) cannot "
                            f"{PERMISSION_LABELS[permission][0].lower()}"
                            f"{PERMISSION_LABELS[permission][1:]}. Ask an owner or admin."
                        )
                    },
                    status=403,
                )
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
