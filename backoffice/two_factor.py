"""The staff second factor: a TOTP code after the password, with enrollment on first sign-in.

A staff member without a confirmed authenticator is shown a new secret (as a QR code and as
text) and confirms it with a first code; from then on a code is asked after every password
sign-in. django-otp throttles wrong codes per device.
"""

import segno
from django import forms
from django.conf import settings
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp import login as otp_login
from django_otp.models import Device
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User
from core import audit
from core.staff import reason_clean

DEVICE_NAME = "Authenticator app"


def otp_required() -> bool:
    return settings.STAFF_OTP_REQUIRED


def second_factor_device(request: HttpRequest) -> Device | None:
    """The confirmed device this session passed the second factor with, if any.

    Read from the session here rather than by django-otp's middleware, which would shadow
    `User.is_verified` (the e-mail address check) with its own method.
    """
    persistent_id = request.session.get(DEVICE_ID_SESSION_KEY)
    if not persistent_id:
        return None
    device = Device.from_persistent_id(persistent_id)
    if device is None or device.user_id != request.user.pk or not device.confirmed:
        return None
    return device


def needs_second_factor(request: HttpRequest) -> bool:
    user = request.user
    return (
        otp_required()
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and second_factor_device(request) is None
    )


def safe_next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return default


def redirect_to_second_factor(request: HttpRequest) -> HttpResponse:
    target = safe_next(request, reverse("admin:index"))
    return redirect(f"{reverse('admin:two_factor')}?{urlencode({'next': target})}")


class CodeForm(forms.Form):
    code = forms.RegexField(
        regex=r"^\s*\d{6}\s*$",
        label="6-digit code",
        error_messages={"invalid": "Enter the 6 digits your authenticator app shows."},
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
    )


def pending_device(user: object) -> TOTPDevice:
    """The unconfirmed device being set up (one per user, kept across reloads of the page)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    return device or TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)


def qr_svg(device: TOTPDevice) -> str:
    return segno.make(device.config_url, error="m").svg_inline(scale=4, dark="#0f172a")


@never_cache
@csrf_protect
def verify(request: HttpRequest) -> HttpResponse:
    from django.contrib import admin

    index = reverse("admin:index")
    user = request.user
    if not (user.is_authenticated and user.is_active and user.is_staff):
        return redirect(f"{reverse('admin:login')}?{urlencode({REDIRECT_FIELD_NAME: index})}")
    next_url = safe_next(request, index)
    if not needs_second_factor(request):
        return redirect(next_url)
    confirmed = TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()
    device = confirmed or pending_device(user)
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        allowed, _ = device.verify_is_allowed()
        if not allowed:
            form.add_error("code", "Too many wrong codes. Wait a minute and try again.")
        elif device.verify_token(form.cleaned_data["code"].strip()):
            with transaction.atomic():
                if not device.confirmed:
                    device.confirmed = True
                    device.save(update_fields=["confirmed"])
                    audit.record(action="staff.second_factor_enrolled", actor=user, target=user)
                # A new session key once both factors pass: a cookie seen after the password
                # alone never becomes a verified session.
                request.session.cycle_key()
                otp_login(request, device)
                audit.record(action="staff.signed_in", actor=user, target=user)
            return redirect(next_url)
        else:
            form.add_error("code", "That code is not right. Check the time on your device.")
    context = {
        **admin.site.each_context(request),
        "title": "Two-factor sign-in" if confirmed else "Set up two-factor sign-in",
        "form": form,
        "enrolling": confirmed is None,
        "next": next_url,
    }
    if confirmed is None:
        context["secret"] = device_secret(device)
        context["qr"] = qr_svg(device)
        context["config_url"] = device.config_url
    return TemplateResponse(request, "admin/two_factor.html", context)


def device_secret(device: TOTPDevice) -> str:
    """The base32 secret, in groups of four, for typing into an authenticator by hand."""
    from base64 import b32encode

    secret = b32encode(device.bin_key).decode().rstrip("=")
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@transaction.atomic
def second_factor_reset(*, user: User, actor: User, reason: str) -> int:
    """Forget a staff member's authenticators (a lost phone): they set one up again at their
    next sign-in, after the password. Superusers only; audited with the reason."""
    from core.errors import NotAllowed

    if not (getattr(actor, "is_active", False) and getattr(actor, "is_superuser", False)):
        raise NotAllowed("Only a superuser can reset a second factor.")
    reason = reason_clean(reason)
    removed, _ = TOTPDevice.objects.filter(user=user).delete()
    audit.record(
        action="staff.second_factor_reset",
        actor=actor,
        target=user,
        data={"devices": removed},
        reason=reason,
    )
    return removed
