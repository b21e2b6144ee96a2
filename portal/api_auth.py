"""Authentication by API key (or the portal session) and scope checks for the REST API."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import (
    BaseAuthentication,
    SessionAuthentication,
    get_authorization_header,
)
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts import api_keys
from portal.middleware import client_address


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer hbk_...`; the key (request.auth) names the organization."""

    keyword = "bearer"

    def authenticate(self, request: Request):  # type: ignore[no-untyped-def]
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != self.keyword.encode() or len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Send the key as `Authorization: Bearer <key>`.", code="malformed_header"
            )
        try:
            raw = header[1].decode()
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed(
                "The API key is malformed.", code="malformed_key"
            ) from exc
        try:
            found = api_keys.authenticate(raw, ip=client_address(request))
        except api_keys.KeyRefused as exc:
            if exc.status == 403:  # a good key its organization may not use (suspended)
                raise exceptions.PermissionDenied(exc.message, code=exc.code) from exc
            raise exceptions.AuthenticationFailed(exc.message, code=exc.code) from exc
        return (found.api_key.created_by or _KeyUser(), found.api_key)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class _KeyUser:
    """A key made by an operator has no person behind it."""

    is_authenticated = True
    is_staff = False
    pk = None
    email = ""


class PortalSession(SessionAuthentication):
    """The portal's signed-in user; the organization comes from the `org` parameter."""


class HasScope(BasePermission):
    """The endpoint's `required_scopes` (by method) must be on the key. Session users act
    with their role instead, which the services check."""

    def has_permission(self, request: Request, view) -> bool:  # type: ignore[no-untyped-def]
        needed = getattr(view, "required_scopes", {}).get(request.method)
        if needed is None or not hasattr(request.auth, "scopes"):
            return True
        if needed not in request.auth.scopes:
            raise exceptions.PermissionDenied(
                f"This key lacks the {needed} scope.", code="missing_scope"
            )
        return True


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api_auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {"type": "http", "scheme": "bearer", "description": "An API key: hbk_..."}


class PortalSessionScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api_auth.PortalSession"
    name = "portalSession"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
