"""Team pages: members, their roles, invitations and the invitation link itself."""

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.errors import ServiceError
from core.forms import add_service_error

from . import selectors
from .decorators import (
    MemberRequest,
    org_member,
    recent_password,
)
from .form_stash import form_restore, form_stash_take
from .forms import (
    InvitationSignupForm,
    InviteForm,
    RoleForm,
    role_choices_for,
)
from .models import User
from .permissions import (
    PERMISSION_LABELS,
    Permission,
    Role,
    can,
    role_matrix,
)
from .services import memberships, registration
from .views import BACKEND


# --- Team ------------------------------------------------------------------------------------
def _team_context(
    request: MemberRequest, invite_form: InviteForm | None = None
) -> dict[str, object]:
    role = request.membership.role
    members = list(selectors.memberships_for_org(request.organization))
    return {
        "members": members,
        "sole_owner": sum(1 for m in members if m.role == Role.OWNER) == 1,
        "invitations": selectors.open_invitations_for_org(request.organization),
        "invite_form": invite_form or InviteForm(actor_role=role),
        "may_manage": can(role, Permission.MANAGE_TEAM),
        "role_choices": role_choices_for(role),
        "roles": Role.choices,
        "matrix": role_matrix(),
        "now": timezone.now(),
    }


@org_member(Permission.VIEW_TEAM)
@require_GET
def team(request: MemberRequest) -> HttpResponse:
    context = _team_context(request)
    if context["may_manage"]:
        _restore_team_forms(request, context)
    return render(request, "accounts/team.html", context)


def _restore_team_forms(request: MemberRequest, context: dict[str, object]) -> None:
    """After the password confirmation: the invitation as it was typed, and the role a member
    was being given (shown chosen, waiting for Save role)."""
    slug = request.organization.slug
    invite_form = context["invite_form"]
    assert isinstance(invite_form, InviteForm)
    form_restore(
        request, invite_form, name=reverse("team-invite", args=[slug]), button="Send invitation"
    )
    members = context["members"]
    assert isinstance(members, list)
    for member in members:
        stash = form_stash_take(request, name=reverse("member-role", args=[slug, member.pk]))
        role = (stash or {}).get("role") or []
        if role and role[-1] in Role.values:
            member.pending_role = role[-1]
            messages.info(
                request,
                f"Password confirmed. {member.user.display_name}'s role is not changed yet: "
                "check it and press Save role.",
            )


@org_member(Permission.MANAGE_TEAM)
@recent_password("team", keep=("email", "role"))
@require_POST
def team_invite(request: MemberRequest) -> HttpResponse:
    form = InviteForm(request.POST, actor_role=request.membership.role)
    if form.is_valid():
        try:
            invitation, _token = memberships.invitation_create(
                organization=request.organization, actor=request.user, **form.cleaned_data
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Invitation sent to {invitation.email}.")
            return redirect("team", slug=request.organization.slug)
    return render(request, "accounts/team.html", _team_context(request, form), status=400)


@org_member(Permission.MANAGE_TEAM)
@require_POST
def invitation_revoke(request: MemberRequest, invitation_id: int) -> HttpResponse:
    invitation = selectors.open_invitation_for_org(request.organization, invitation_id)
    if invitation is None:
        messages.error(request, "This invitation was already used or withdrawn.")
    else:
        try:
            memberships.invitation_revoke(invitation=invitation, actor=request.user)
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Invitation to {invitation.email} withdrawn.")
    return redirect("team", slug=request.organization.slug)


def _is_teammate(request: MemberRequest, membership_id: int) -> bool:
    return selectors.membership_for_org(request.organization, membership_id) is not None


@org_member(Permission.MANAGE_TEAM)
@recent_password("team", find=_is_teammate, keep=("role",))
@require_POST
def member_role(request: MemberRequest, membership_id: int) -> HttpResponse:
    membership = selectors.membership_for_org(request.organization, membership_id)
    if membership is None:
        return _not_a_member(request)
    form = RoleForm(request.POST)
    error = ""
    if not form.is_valid():
        error = "Choose one of the roles listed."
    else:
        try:
            membership = memberships.membership_role_change(
                membership=membership, actor=request.user, role=form.cleaned_data["role"]
            )
        except ServiceError as exc:
            error = exc.message
            membership.refresh_from_db()
    if request.htmx:
        context = {**_team_context(request), "member": membership, "row_error": error}
        return render(request, "accounts/_member_row.html", context, status=400 if error else 200)
    if error:
        messages.error(request, error)
    else:
        messages.success(
            request,
            f"{membership.user.display_name} is now {membership.get_role_display().lower()}.",
        )
    return redirect("team", slug=request.organization.slug)


@org_member(Permission.VIEW_TEAM)
@recent_password("team", find=_is_teammate)
@require_POST
def member_remove(request: MemberRequest, membership_id: int) -> HttpResponse:
    membership = selectors.membership_for_org(request.organization, membership_id)
    if membership is None:
        return _not_a_member(request)
    try:
        memberships.membership_remove(membership=membership, actor=request.user)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("team", slug=request.organization.slug)
    if membership.user_id == request.user.pk:
        messages.success(request, f"You left {request.organization.name}.")
        request.session.pop("organization", None)
        return redirect("home")
    messages.success(request, f"{membership.user.display_name} was removed.")
    return redirect("team", slug=request.organization.slug)


def _not_a_member(request: MemberRequest) -> HttpResponse:
    messages.error(request, "This person is no longer a member.")
    return redirect("team", slug=request.organization.slug)


# --- Invitations (the link in the e-mail) ------------------------------------------------------
@require_http_methods(["GET", "POST"])
def invitation(request: HttpRequest, token: str) -> HttpResponse:
    try:
        invite = memberships.invitation_for_token(token)
    except ServiceError as exc:
        return render(
            request, "accounts/invitation_invalid.html", {"message": exc.message}, status=exc.status
        )
    signup_form = InvitationSignupForm()
    account_exists = User.objects.filter(email__iexact=invite.email).exists()
    if request.method == "POST":
        if request.user.is_authenticated:
            try:
                membership = memberships.invitation_accept(token=token, user=request.user)
            except ServiceError as exc:
                messages.error(request, exc.message)
                return redirect("invitation", token=token)
            messages.success(request, f"You joined {membership.organization.name}.")
            return redirect("dashboard", slug=membership.organization.slug)
        signup_form = InvitationSignupForm(request.POST)
        if signup_form.is_valid():
            try:
                membership = registration.user_signup_with_invitation(
                    token=token, **signup_form.cleaned_data
                )
            except ServiceError as exc:
                add_service_error(signup_form, exc)
            else:
                login(request, membership.user, backend=BACKEND)
                messages.success(request, f"Welcome! You joined {membership.organization.name}.")
                return redirect("dashboard", slug=membership.organization.slug)
    return render(
        request,
        "accounts/invitation.html",
        {
            "invitation": invite,
            "signup_form": signup_form,
            "account_exists": account_exists,
            "wrong_user": request.user.is_authenticated
            and request.user.email.lower() != invite.email.lower(),
            "login_url": f"{reverse('login')}?{urlencode({'next': request.path}, safe='/')}",
            "role_permissions": [
                label for perm, label in PERMISSION_LABELS.items() if can(invite.role, perm)
            ],
        },
    )
