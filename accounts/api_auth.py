"""Who calls the REST API: an API key (or the portal session), its organization and actor."""

from typing import TYPE_CHECKING, cast

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import (
    BaseAuthentication,
    SessionAuthentication,
    get_authorization_header,
)
from rest_framework.request import Request

from accounts.api_keys.authentication import KeyRefused, api_key_authenticate
from accounts.models import ApiKey, Organization, User
from accounts.selectors import membership_for
from core.errors import NotAllowed, NotFound
from core.middleware import client_address

if TYPE_CHECKING:  # importing it at load time would import DRF's views while DRF's settings load
    from drf_spectacular.openapi import AutoSchema


def organization_of(request: Request) -> Organization:
    """The key's organization, or for a portal session the one named by `org`."""
    if isinstance(request.auth, ApiKey):
        return request.auth.organization
    slug = request.query_params.get("org") or (
        request.data.get("org") if isinstance(request.data, dict) else None
    )
    membership = membership_for(user=request.user, slug=slug or "")
    if membership is None:
        raise NotFound(
            "Name your organization with `org`." if not slug else "No such organization.",
            param="org",
        )
    return membership.organization


def actor_of(request: Request) -> User:
    """Who acts: the signed-in user, the member who made the key, or a service key's own
    identity (so the audit log names the key)."""
    user = request.user
    if getattr(user, "pk", None) is None:
        raise NotAllowed(
            "This key was made by an operator and cannot act for a person.", code="no_key_owner"
        )
    return cast(User, user)  # only a person has a primary key (an operator's key user has none)


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer hbk_...`; the key (request.auth) names the organization."""

    keyword = "bearer"

    def authenticate(self, request: Request) -> tuple["User | _KeyUser", ApiKey] | None:
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
            found = api_key_authenticate(raw, ip=client_address(request))
        except KeyRefused as exc:
            if exc.status == 403:  # a good key its organization may not use (suspended)
                raise exceptions.PermissionDenied(exc.message, code=exc.code) from exc
            raise exceptions.AuthenticationFailed(exc.message, code=exc.code) from exc
        key = found.api_key
        return (key.service_user if key.is_service else key.created_by) or _KeyUser(), key

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


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.api_auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: "AutoSchema") -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API key: hbk_..."}


class PortalSessionScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.api_auth.PortalSession"
    name = "portalSession"

    def get_security_definition(self, auto_schema: "AutoSchema") -> dict[str, str]:
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
