from datetime import timedelta

from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, logout, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm, SetPasswordForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.errors import NotFound, ServiceError
from core.forms import add_service_error

from . import api_keys, selectors
from .api_keys.selectors import api_key_for_org, api_keys_for_org
from .auth import axes_username
from .decorators import (
    AuthenticatedRequest,
    MemberRequest,
    ask_for_password,
    mark_reauthenticated,
    org_member,
    recently_reauthenticated,
)
from .forms import (
    ApiKeyForm,
    LoginForm,
    OrganizationCreateForm,
    OrganizationForm,
    ProfileForm,
    QueuedPasswordResetForm,
    SignupForm,
)
from .models import ApiKey, User
from .permissions import (
    Permission,
    can,
    may_make_service_keys,
)
from .redirects import safe_next
from .services import organizations, registration, users
from .validators import suggest_slug

BACKEND = "django.contrib.auth.backends.ModelBackend"  # who signs people in here
RESEND_INTERVAL_SECONDS = 60
SIGNUP_EMAIL_KEY = "signup_email"  # the address the last sign-up in this browser mailed


# --- Sign-up, sign-in -----------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            # None when the address already has an account: its owner is mailed instead, and
            # the answer is the same, so the form tells no one which addresses have accounts.
            registration.user_signup(
                email=data["email"],
                password=data["password"],
                full_name=data["full_name"],
                organization_name=data["organization_name"],
                organization_slug=data["organization_slug"],
                country=data["country"],
                billing_email=data["billing_email"],
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            request.session[SIGNUP_EMAIL_KEY] = data["email"]
            return redirect("signup-sent")
    return render(request, "accounts/signup.html", {"form": form})


@require_GET
def signup_sent(request: HttpRequest) -> HttpResponse:
    """After a sign-up, new address or not: look in the inbox of the address typed."""
    return render(
        request, "accounts/signup_sent.html", {"email": request.session.get(SIGNUP_EMAIL_KEY, "")}
    )


@require_GET
def signup_slug(request: HttpRequest) -> HttpResponse:
    """htmx: suggest an address from the organization name and say whether it is free."""
    slug = (request.GET.get("organization_slug") or "").strip().lower()
    name = request.GET.get("organization_name") or ""
    suggested = ""
    if not slug and name:
        suggested = slug = suggest_slug(name)
    error = ""
    if slug:
        try:
            organizations.validate_new_slug(slug)
        except ServiceError as exc:
            error = exc.message
    return render(
        request,
        "accounts/_slug_status.html",
        {"slug": slug, "suggested": suggested, "error": error},
    )


# Django's sign-in and sign-out views name the site after the request's host; the pages name
# the product.
BRAND = {"site_name": settings.SITE_NAME}


class LoginView(auth_views.LoginView):
    extra_context = BRAND
    template_name = "accounts/login.html"
    authentication_form = LoginForm
    redirect_authenticated_user = True

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_valid(form)
        # The password was just typed: sensitive actions need not ask for it again at once.
        mark_reauthenticated(self.request)
        return response


def locked_out(
    request: HttpRequest, response: HttpResponse | None, credentials: dict
) -> HttpResponse:
    """django-axes calls this once an account has too many wrong passwords (at sign-in, the
    password confirmation or the password change)."""
    return render(
        request,
        "accounts/locked_out.html",
        {
            "failure_limit": settings.AXES_FAILURE_LIMIT,
            "cooloff_minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60),
        },
        status=429,
    )


def _password_recheck(request: AuthenticatedRequest, password: str) -> bool:
    """Check the signed-in user's password as sign-in does, through django-axes: a wrong one
    counts toward the account's lockout (AXES_FAILURE_LIMIT), and a locked account is refused
    even the right one. At the lockout the session is signed out too (ten wrong guesses from a
    signed-in session look like someone else holding it) and axes' middleware answers with the
    lockout page."""
    email = request.user.email
    user = authenticate(request, username=email, password=password)
    if user is not None and user.pk == request.user.pk:
        if settings.AXES_RESET_ON_SUCCESS:  # as a successful sign-in does
            AxesProxyHandler.reset_attempts(username=axes_username(request, {"username": email}))
        return True
    if getattr(request, "axes_locked_out", False):
        logout(request)
    return False


@require_GET
def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    try:
        user = registration.email_verify(token=token)
    except ServiceError as exc:
        return render(request, "accounts/verify_failed.html", {"message": exc.message}, status=400)
    messages.success(request, f"Thank you: {user.email} is verified.")
    return redirect("home" if request.user.is_authenticated else "login")


@login_required
@require_POST
def verify_email_resend(request: AuthenticatedRequest) -> HttpResponse:
    now = timezone.now().timestamp()
    last = request.session.get("verification_sent_at", 0)
    if request.user.is_verified:
        messages.info(request, "Your e-mail address is already verified.")
    elif now - last < RESEND_INTERVAL_SECONDS:
        messages.warning(request, "We just sent a link. Give it a minute, then check spam too.")
    else:
        try:
            registration.verification_resend_rate_enforce(user=request.user)
        except ServiceError as exc:
            messages.error(request, exc.message)
            return redirect(safe_next(request, reverse("home")))
        registration.email_verification_send(user=request.user)
        request.session["verification_sent_at"] = now
        messages.success(request, f"We sent a new verification link to {request.user.email}.")
    return redirect(safe_next(request, reverse("home")))


class PasswordResetView(auth_views.PasswordResetView):
    extra_context = BRAND
    template_name = "accounts/password_reset.html"
    form_class = QueuedPasswordResetForm
    success_url = reverse_lazy("password-reset-done")

    def form_valid(self, form: PasswordResetForm) -> HttpResponse:
        try:  # the same refusal for every address, known or not
            registration.password_reset_rate_enforce(email=form.cleaned_data["email"])
        except ServiceError as exc:
            add_service_error(form, exc)
            return self.render_to_response(self.get_context_data(form=form), status=exc.status)
        return super().form_valid(form)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    extra_context = BRAND
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    extra_context = BRAND
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("login")

    def form_valid(self, form: "SetPasswordForm[User]") -> HttpResponse:
        response = super().form_valid(form)
        users.password_change_record(user=form.user)
        messages.success(self.request, "Your password is changed. Sign in with the new one.")
        return response


@login_required
@require_http_methods(["GET", "POST"])
def profile(request: AuthenticatedRequest) -> HttpResponse:
    from django.contrib.auth.forms import PasswordChangeForm

    profile_form = ProfileForm(initial={"full_name": request.user.full_name})
    password_form = PasswordChangeForm(request.user)
    if request.method == "POST" and request.POST.get("form") == "profile":
        profile_form = ProfileForm(request.POST)
        if profile_form.is_valid():
            try:
                users.profile_update(
                    user=request.user, full_name=profile_form.cleaned_data["full_name"]
                )
            except ServiceError as exc:
                add_service_error(profile_form, exc)
            else:
                messages.success(request, "Profile saved.")
                return redirect("profile")
    elif request.method == "POST" and request.POST.get("form") == "password":
        password_form = PasswordChangeForm(request.user, request.POST)
        if not _password_recheck(request, request.POST.get("old_password", "")):
            if not request.user.is_authenticated:  # locked out: axes answers with its page
                return redirect("login")
            password_form.is_valid()  # shows every other problem too
            if "old_password" not in password_form.errors:  # right, but the account is locked
                password_form.add_error("old_password", "That password is not right.")
        elif password_form.is_valid():
            user = password_form.save()
            update_session_auth_hash(request, user)
            users.password_change_record(user=user)
            messages.success(request, "Password changed.")
            return redirect("profile")
    return render(
        request,
        "accounts/profile.html",
        {
            "profile_form": profile_form,
            "password_form": password_form,
            "memberships": selectors.memberships_for_user(request.user),
        },
    )


# --- Organizations ---------------------------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
def organization_create(request: AuthenticatedRequest) -> HttpResponse:
    form = OrganizationCreateForm(
        request.POST or None, initial={"billing_email": request.user.email}
    )
    if request.method == "POST" and form.is_valid():
        try:
            organization = organizations.organization_create(
                owner=request.user, **form.cleaned_data
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"{organization.name} is ready.")
            return redirect("dashboard", slug=organization.slug)
    return render(request, "accounts/organization_create.html", {"form": form})


@org_member(Permission.VIEW_ORGANIZATION)
@require_http_methods(["GET", "POST"])
def organization_settings(request: MemberRequest) -> HttpResponse:
    organization = request.organization
    may_edit = can(request.membership.role, Permission.MANAGE_ORGANIZATION)
    form = OrganizationForm(request.POST or None, instance=organization)
    if not may_edit:
        for field in form.fields.values():
            field.disabled = True
    if request.method == "POST":
        if not may_edit:
            return render(
                request,
                "403.html",
                {"message": "Only owners and admins can edit organization details."},
                status=403,
            )
        if form.is_valid():
            try:
                organizations.organization_update(
                    organization=organization,
                    actor=request.user,
                    **{name: form.cleaned_data[name] for name in form.changed_data},
                )
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                messages.success(request, "Organization details saved.")
                return redirect("organization-settings", slug=organization.slug)
        # A failed ModelForm has already written bad values onto the instance; drop them.
        organization.refresh_from_db()
    return render(
        request, "accounts/organization_settings.html", {"form": form, "may_edit": may_edit}
    )


# --- Re-authentication and API keys -----------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
def confirm_password(request: AuthenticatedRequest) -> HttpResponse:
    """Ask for the password again before a sensitive action (API keys, payment methods, roles)."""
    next_url = safe_next(request, "/")
    error = ""
    if request.method == "POST":
        if _password_recheck(request, request.POST.get("password", "")):
            mark_reauthenticated(request)
            return redirect(next_url)
        if not request.user.is_authenticated:  # locked out: axes answers with its page
            return redirect("login")
        error = "That password is not right."
    return render(
        request,
        "accounts/confirm_password.html",
        {
            "next": next_url,
            "error": error,
            "max_age_minutes": int(settings.REAUTHENTICATION_MAX_AGE.total_seconds() // 60),
        },
        status=400 if error else 200,
    )


@org_member(Permission.VIEW_ORGANIZATION)
@require_http_methods(["GET", "POST"])
def api_keys_page(request: MemberRequest) -> HttpResponse:
    organization = request.organization
    may_manage = can(request.membership.role, Permission.MANAGE_API_KEYS)
    created_key = ""
    form = ApiKeyForm(request.POST or None)
    if request.method == "POST":
        if not may_manage:
            return render(
                request, "403.html", {"message": "Your role cannot create API keys."}, status=403
            )
        if not recently_reauthenticated(request):
            return ask_for_password(request, request.path)
        if form.is_valid():
            try:
                _key, created_key = api_keys.api_key_create(
                    organization=organization,
                    actor=request.user,
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_at=form.cleaned_data["expires_at"],
                    kind=form.cleaned_data["kind"] or ApiKey.Kind.PERSONAL,
                )
            except ServiceError as exc:
                add_service_error(form, exc)
            else:
                form = ApiKeyForm()
    keys = list(api_keys_for_org(organization))
    return render(
        request,
        "accounts/api_keys.html",
        {
            "keys": keys,
            "manageable": _manageable(request, keys) if may_manage else set(),
            "form": form,
            "created_key": created_key,
            "may_manage": may_manage,
            "may_make_service_keys": may_make_service_keys(request.membership.role),
            "now": timezone.now(),
        },
        status=400 if form.errors else 200,
    )


def _manageable(request: MemberRequest, keys: list[ApiKey]) -> set[str]:
    role = request.membership.role
    return {
        k.public_id
        for k in keys
        if api_keys.may_manage_key(role=role, actor=request.user, api_key=k)
    }


@org_member(Permission.MANAGE_API_KEYS)
@require_POST
def api_key_action(request: MemberRequest, public_id: str, action: str) -> HttpResponse:
    if action not in ("revoke", "rotate"):
        return render(request, "404.html", status=404)
    try:  # another organization's key is 404 before the password is asked
        api_key = api_key_for_org(request.organization, public_id)
    except NotFound:
        return render(request, "404.html", status=404)
    page = reverse("api-keys", args=[request.organization.slug])
    if not recently_reauthenticated(request):
        return ask_for_password(request, page)
    try:
        if action == "revoke":
            api_keys.api_key_revoke(api_key=api_key, actor=request.user)
            messages.success(request, f"Key {api_key.name} revoked.")
        else:
            _new, key = api_keys.api_key_rotate(
                api_key=api_key, actor=request.user, grace=timedelta(hours=24)
            )
            keys = list(api_keys_for_org(request.organization))
            return render(
                request,
                "accounts/api_keys.html",
                {
                    "keys": keys,
                    "manageable": _manageable(request, keys),
                    "form": ApiKeyForm(),
                    "created_key": key,
                    "rotated": api_key,
                    "may_manage": True,
                    "may_make_service_keys": may_make_service_keys(request.membership.role),
                    "now": timezone.now(),
                },
            )
    except ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("api-keys", slug=request.organization.slug)
