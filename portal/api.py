"""What every API endpoint shares: one JSON error shape and cursor pagination (authentication
and scopes are in portal/api_auth.py, which DRF's settings import early)."""

from django.http import Http404
from rest_framework import exceptions
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from portal.errors import ServiceError


class Cursor(CursorPagination):
    page_size = 20
    max_page_size = 100
    page_size_query_param = "limit"
    ordering = "-created_at"


def _shape(
    status_code: int, error_type: str, code: str, message: str, param: str | None = None
) -> Response:
    return Response(
        {"error": {"type": error_type, "code": code, "message": message, "param": param}},
        status=status_code,
    )


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """Every error as `{"error": {"type", "code", "message", "param"}}`."""
    if isinstance(exc, ServiceError):
        kinds = {
            400: "invalid_request",
            402: "payment_error",
            403: "permission_denied",
            404: "not_found",
            409: "conflict",
            503: "unavailable",
        }
        return _shape(
            exc.status, kinds.get(exc.status, "invalid_request"), exc.code, exc.message, exc.param
        )
    if isinstance(exc, Http404):
        return _shape(404, "not_found", "not_found", "Not found.")
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError) and isinstance(exc.detail, dict):
        param, messages = next(iter(exc.detail.items()))
        message = messages[0] if isinstance(messages, list) else str(messages)
        code = getattr(message, "code", "invalid")
        return _shape(
            400,
            "invalid_request",
            str(code),
            str(message),
            None if param == "non_field_errors" else param,
        )
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    message = detail[0] if isinstance(detail, list) else detail
    code = getattr(message, "code", None) or getattr(exc, "default_code", "error")
    kinds = {
        401: "authentication_error",
        403: "permission_denied",
        404: "not_found",
        405: "invalid_request",
        429: "rate_limited",
    }
    shaped = _shape(
        response.status_code,
        kinds.get(response.status_code, "invalid_request"),
        str(code),
        str(message),
    )
    for header in ("WWW-Authenticate", "Retry-After", "Allow"):
        if header in response:
            shaped[header] = response[header]
    return shaped
