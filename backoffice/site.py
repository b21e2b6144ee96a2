"""The admin site: staff sign in with a password, then a TOTP code; the index is a dashboard."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path

from .two_factor import needs_second_factor, redirect_to_second_factor, verify


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

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [
            path("two-factor/", verify, name="two_factor"),
            *super().get_urls(),
        ]

    def index(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        from . import dashboard

        context = {**dashboard.context(request), **(extra_context or {})}
        return super().index(request, context)
