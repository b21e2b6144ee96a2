"""What every API endpoint shares: one JSON error shape, cursor pagination, Idempotency-Key,
and the rate limit (authentication is accounts' own, in accounts/api_auth.py; the scope check
is in core/scopes.py: DRF's settings import both early, before its views exist)."""

import hashlib
import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import Http404
from django.utils import timezone
from rest_framework import exceptions, pagination
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView, set_rollback
from rest_framework.views import exception_handler as drf_exception_handler

from core import context as request_context
from core.errors import ServiceError
from core.models import IdempotencyRecord
from core.ratelimit import RateLimited, rate_limit_hit

logger = logging.getLogger(__name__)


class Cursor(CursorPagination):
    """Pages of `limit` (1 to 100, 20 when omitted) from `cursor`; anything else is a 400."""

    page_size = 20
    max_page_size = 100
    page_size_query_param = "limit"
    ordering = "-created_at"

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get("limit")
        if raw is None:
            return self.page_size
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= self.max_page_size:
            raise exceptions.ValidationError(
                {"limit": [f"Give a whole number from 1 to {self.max_page_size}."]}
            )
        return int(raw)

    def decode_cursor(self, request: Request) -> pagination.Cursor | None:
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise exceptions.ValidationError(
                {"cursor": ["Use a cursor from a `next` or `previous` link."]}
            ) from None

    def get_schema_operation_parameters(self, view: APIView) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == "limit":
                parameter["description"] = "Results per page"
                parameter["schema"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                    "default": self.page_size,
                }
            else:
                parameter["description"] = "Where the page starts: from a `next` or `previous` link"
        return parameters


def _shape(
    status_code: int,
    error_type: str,
    code: str,
    message: str,
    param: str | None = None,
    errors: list[dict[str, str | None]] | None = None,
) -> Response:
    """The error body. A 400 also lists every invalid field in `errors` (the first is the one
    `error` names), so a client fixes them all in one go."""
    body: dict[str, object] = {"type": error_type, "code": code, "message": message, "param": param}
    if status_code == 400:
        body["errors"] = errors or [{"param": param, "code": code, "message": message}]
    return Response({"error": body}, status=status_code)


def _param(path: str | None, key: object) -> str | None:
    """`events` and 3 give `events[3]`; `events[3]` and `model` give `events[3].model`; an
    error of the whole object (DRF's non_field_errors, a form's __all__) names no field."""
    if key in ("non_field_errors", "__all__"):
        return path
    if isinstance(key, int):
        return f"{path or ''}[{key}]"
    return f"{path}.{key}" if path else str(key)


def validation_errors(detail: object, path: str | None = None) -> list[dict[str, str | None]]:
    """Every message of a (nested) ValidationError detail as `{param, code, message}`, in the
    order the fields were checked."""
    if isinstance(detail, dict):
        return [
            error
            for key, value in detail.items()
            for error in validation_errors(value, _param(path, key))
        ]
    if isinstance(detail, list):
        if all(isinstance(item, str) for item in detail):
            return [error for item in detail for error in validation_errors(item, path)]
        # A list of objects (a list serializer's errors): each by its position.
        return [
            error
            for index, item in enumerate(detail)
            for error in validation_errors(item, _param(path, index))
        ]
    code = getattr(detail, "code", None) or "invalid"
    return [{"param": path, "code": str(code), "message": str(detail)}]


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """Every error as `{"error": {"type", "code", "message", "param"}}`; a 400 adds `errors`,
    each invalid field as `{param, code, message}`."""
    if isinstance(exc, ServiceError):
        kinds = {
            400: "invalid_request",
            402: "payment_error",
            403: "permission_denied",
            404: "not_found",
            409: "conflict",
            429: "rate_limited",
            503: "unavailable",
        }
        shaped = _shape(
            exc.status, kinds.get(exc.status, "invalid_request"), exc.code, exc.message, exc.param
        )
        if isinstance(exc, RateLimited):
            shaped["Retry-After"] = str(exc.retry_after)
        return shaped
    if isinstance(exc, Http404):
        return _shape(404, "not_found", "not_found", "Not found.")
    response = drf_exception_handler(exc, context)
    if response is None:
        # A bug or an outage: logged whole (secrets masked), answered in the usual shape with
        # nothing of the exception in it, and the request id support can look it up by.
        logger.error("API request failed", exc_info=exc)
        set_rollback()
        return _shape(
            500,
            "api_error",
            "internal_error",
            "Something went wrong on our side. If it persists, tell support the request id "
            f"{request_context.request_id.get()}.",
        )
    if isinstance(exc, exceptions.ValidationError):
        errors = validation_errors(exc.detail) or [
            {"param": None, "code": "invalid", "message": "Invalid input."}
        ]
        first = errors[0]
        return _shape(
            400,
            "invalid_request",
            str(first["code"]),
            str(first["message"]),
            first["param"],
            errors,
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


# --- Idempotency and rate limits -------------------------------------------------------------
IDEMPOTENCY_WINDOW = timedelta(hours=24)


class KeyRateThrottle(BaseThrottle):
    """API_RATE_LIMIT requests per API key (or user) in each API_RATE_WINDOW-second window,
    counted atomically in the shared cache (core.ratelimit), so clients arriving together get
    exactly the limit between them. 429 with Retry-After (until the window ends) past it;
    every answer says how much is left."""

    def allow_request(self, request: Request, view: APIView) -> bool:
        hit = rate_limit_hit(
            scope="api",
            ident=_owner(request),
            limit=settings.API_RATE_LIMIT,
            window=settings.API_RATE_WINDOW,
        )
        if isinstance(view, ApiView):
            view.rate_limit = (hit.limit, hit.remaining)
        self.wait_seconds = 0 if hit.allowed else hit.retry_after
        return hit.allowed

    def wait(self) -> float:
        return self.wait_seconds


def _key_in_use() -> exceptions.APIException:
    return exceptions.APIException(
        detail=exceptions.ErrorDetail(
            "A request with this Idempotency-Key is still being processed.",
            code="idempotency_key_in_use",
        )
    )


class _Replay(exceptions.APIException):
    """Carries a stored response out of `initial`, where DRF lets us stop a request early."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


def _owner(request: Request) -> str:
    auth = request.auth
    return f"key:{auth.pk}" if getattr(auth, "pk", None) else f"user:{request.user.pk}"


class ApiView(APIView):
    """Base of every endpoint: Idempotency-Key on POST, and a per-key rate limit."""

    throttle_classes = [KeyRateThrottle]
    rate_limit: tuple[int, int] | None = None  # (limit, remaining), set by KeyRateThrottle
    _idempotency: IdempotencyRecord | None = None

    def initial(self, request: Request, *args: object, **kwargs: object) -> None:
        super().initial(request, *args, **kwargs)
        self._idempotency = None
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key:
            return
        if len(key) > 255:
            raise exceptions.ValidationError({"Idempotency-Key": ["Use at most 255 characters."]})
        fingerprint = hashlib.sha256(
            b" ".join([request.method.encode(), request.path.encode(), request.body])
        ).hexdigest()
        owner = _owner(request)
        fresh = timezone.now() - IDEMPOTENCY_WINDOW
        IdempotencyRecord.objects.filter(owner=owner, key=key, created_at__lt=fresh).delete()
        try:
            with transaction.atomic():
                self._idempotency = IdempotencyRecord.objects.create(
                    owner=owner, key=key, request_hash=fingerprint
                )
            return
        except IntegrityError:
            earlier = IdempotencyRecord.objects.filter(owner=owner, key=key).first()
        if earlier is None:
            # The request that held the key failed and let it go meanwhile: try again.
            raise _key_in_use() from None
        if earlier.request_hash != fingerprint:
            raise exceptions.APIException(
                detail=exceptions.ErrorDetail(
                    "This Idempotency-Key was used with a different request.",
                    code="idempotency_key_reused",
                )
            ) from None
        if earlier.status_code is None:
            raise _key_in_use() from None
        replay = Response(earlier.body, status=earlier.status_code)
        replay["Idempotent-Replayed"] = "true"
        raise _Replay(replay)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, _Replay):
            return exc.response
        response = super().handle_exception(exc)
        detail = getattr(exc, "detail", None)
        if response is not None and detail is not None:
            code = getattr(detail, "code", None)
            if code in ("idempotency_key_reused", "idempotency_key_in_use"):
                response.status_code = 409
                response.data["error"]["type"] = "conflict"
        return response

    def finalize_response(
        self, request: Request, response: Response, *args: object, **kwargs: object
    ) -> Response:
        limit = self.rate_limit
        if limit is not None:
            response["X-RateLimit-Limit"], response["X-RateLimit-Remaining"] = (
                str(limit[0]),
                str(limit[1]),
            )
        record = self._idempotency
        if record is not None:
            if response.status_code >= 500:
                record.delete()  # a crash is not an answer: let the client retry
            else:
                IdempotencyRecord.objects.filter(pk=record.pk).update(
                    status_code=response.status_code, body=response.data
                )
            self._idempotency = None
        return super().finalize_response(request, response, *args, **kwargs)
