"""The API's scope check, kept apart from core.api: DRF imports its permission classes while
its own views module is still loading."""

from typing import TYPE_CHECKING

from rest_framework import exceptions
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

if TYPE_CHECKING:
    from rest_framework.views import APIView


class HasScope(BasePermission):
    """The endpoint's `required_scopes` (by method) must be on the key. Session users act
    with their role instead, which the services check."""

    def has_permission(self, request: Request, view: "APIView") -> bool:
        needed = getattr(view, "required_scopes", {}).get(request.method)
        if needed is None or not hasattr(request.auth, "scopes"):
            return True
        if needed not in request.auth.scopes:
            raise exceptions.PermissionDenied(
                f"This key lacks the {needed} scope.", code="missing_scope"
            )
        return True
