from collections.abc import Callable
from functools import wraps
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from . import selectors
from .form_stash import form_stash_save
from .models import Membership, Organization, User
from .permissions import PERMISSION_LABELS, Permission, can

View = Callable[..., HttpResponse]


class AuthenticatedRequest(HttpRequest):
    """A request behind `login_required`: its user is signed in."""

    user: User
    htmx: HtmxDetails  # set on every request by django_htmx's middleware


class MemberRequest(AuthenticatedRequest):
    """A request behind `org_member`: the member's organization and membership."""

    organization: Organization
    membership: Membership


def org_member(permission: Permission | None = None) -> Callable[[View], View]:
    """Resolve /o/<slug>/ to the user's membership, or 404 for anyone who is not a member.

    Sets `request.organization` and `request.membership`. When `permission` is given and the
    member's role lacks it, answers 403 with a page that says what the role cannot do.
    """

    def decorator(view: View) -> View:
        @login_required
        @wraps(view)
        def wrapper(
            request: MemberRequest, slug: str, *args: object, **kwargs: object
        ) -> HttpResponse:  # signed in (login_required ran); the organization is set here
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


# When the signed-in user last typed their password (login or the confirmation page).
REAUTH_SESSION_KEY = "reauthenticated_at"


def mark_reauthenticated(request: HttpRequest) -> None:
    request.session[REAUTH_SESSION_KEY] = timezone.now().timestamp()


def recently_reauthenticated(request: HttpRequest) -> bool:
    stamp = request.session.get(REAUTH_SESSION_KEY)
    return (
        isinstance(stamp, int | float)
        and timezone.now().timestamp() - stamp < settings.REAUTHENTICATION_MAX_AGE.total_seconds()
    )


def ask_for_password(
    request: HttpRequest, then: str, *, keep: tuple[str, ...] = ()
) -> HttpResponse:
    """Send the user to the password confirmation, coming back to `then` (a page, since a POST
    cannot be replayed); htmx requests are redirected as a whole page.

    `keep` names the fields of a refused POST to stash (accounts.form_stash) under the URL it
    was posted to, so the page at `then` can show the form again as it was filled in."""
    if keep and request.method == "POST":
        form_stash_save(request, name=request.path, data=request.POST, fields=keep)
    url = f"{reverse('confirm-password')}?{urlencode({'next': then}, safe='/')}"
    if getattr(request, "htmx", False):
        return HttpResponseClientRedirect(url)
    return redirect(url)


def recent_password(
    page: str | None = None,
    *,
    find: Callable[..., bool] | None = None,
    keep: tuple[str, ...] = (),
) -> Callable[[View], View]:
    """Sensitive actions (API keys, payment methods, roles) need the password typed within
    REAUTHENTICATION_MAX_AGE. Goes inside `org_member`, so another organization's URLs still
    answer 404 first. `page` names the URL (taking the organization's slug) to come back to
    after a refused POST; a GET comes back to itself.

    `find(request, **url_kwargs)` says whether the object the URL names is the organization's;
    one that is not (another organization's id, or none) is 404 before the password is asked,
    so our URL with their ids answers as their URL does. `keep`: the fields of a refused POST
    that `page` shows again once the password is confirmed (see `ask_for_password`)."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: MemberRequest, *args: object, **kwargs: object) -> HttpResponse:
            if find is not None and not find(request, **kwargs):
                raise Http404("No such object in this organization.")
            if not recently_reauthenticated(request):
                if request.method == "GET" or page is None:
                    then = request.get_full_path()
                else:
                    then = reverse(page, args=[request.organization.slug])
                return ask_for_password(request, then, keep=keep)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
