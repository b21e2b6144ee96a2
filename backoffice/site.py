"""The admin site: staff sign in with a password, then a TOTP code; the index is a dashboard."""

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import URLPattern, path, reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device


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


class BackOfficeSite(admin.AdminSite):
    site_header = "Hyperblock back office"
    site_title = "Hyperblock back office"
    index_title = "Dashboard"
    index_template = "admin/dashboard.html"

    def has_permission(self, request: HttpRequest) -> bool:
        return super().has_permission(request) and not needs_second_factor(request)

    def login(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if needs_second_factor(request):
            return redirect_to_second_factor(request)
        response = super().login(request, extra_context)
        if request.method == "POST" and needs_second_factor(request):
            return redirect_to_second_factor(request)
        return response

    def get_urls(self) -> list[URLPattern]:
        from . import two_factor

        return [
            path("two-factor/", two_factor.verify, name="two_factor"),
            *super().get_urls(),
        ]

    def index(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        from . import dashboard

        context = {**dashboard.context(request), **(extra_context or {})}
        return super().index(request, context)


def redirect_to_second_factor(request: HttpRequest) -> HttpResponse:
    target = safe_next(request, reverse("admin:index"))
    return redirect(f"{reverse('admin:two_factor')}?{urlencode({'next': target})}")
