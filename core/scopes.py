"""The API's scope check, kept apart from core.api: DRF imports its permission classes while
its own views module is still loading."""

from typing import TYPE_CHECKING

from rest_framework import exceptions
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

if TYPE_CHECKING:
    from rest_framework.views import APIView

# Methods that only read what GET reads (HEAD is GET without the body; OPTIONS describes the
# endpoint and its fields): they need the GET's scope, and on an endpoint without a GET no key
# may use them.
READS_LIKE_GET = frozenset({"HEAD", "OPTIONS"})


def scope_for(view: "APIView", method: str) -> str | None:
    """The scope a key needs for `method` on `view`, or None when no key may use it.

    Fails closed: a method the view does not list is refused unless it reads like GET."""
    scopes: dict[str, str] = getattr(view, "required_scopes", {})
    if method in scopes:
        return scopes[method]
    if method in READS_LIKE_GET:
        return scopes.get("GET")
    return None


class HasScope(BasePermission):
    """The endpoint's `required_scopes` (by method) must be on the key; a method it does not
    list needs the scope of its GET (HEAD, OPTIONS) or is refused. Session users act with
    their role instead, which the services check."""

    def has_permission(self, request: Request, view: "APIView") -> bool:
        if not hasattr(request.auth, "scopes"):
            return True
        method = request.method or ""
        if method.lower() not in view.http_method_names or not hasattr(view, method.lower()):
            return True  # the view answers 405 Method Not Allowed itself
        needed = scope_for(view, method)
        if needed is None:
            raise exceptions.PermissionDenied(
                f"API keys cannot use {method} on this endpoint.", code="method_not_scoped"
            )
        if needed not in request.auth.scopes:
            raise exceptions.PermissionDenied(
                f"This key lacks the {needed} scope.", code="missing_scope"
            )
        return True
