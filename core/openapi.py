"""What the OpenAPI schema of every endpoint shares: the one error body, the error answers by
status, operations written as summary + description + answers, and links that carry an id
from one operation's answer into the next operation's path (clients and the fuzzer follow
them)."""

from collections.abc import Mapping, Sequence
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers

# The error `type`s the exception handler (core.api) answers with.
ERROR_TYPES = [
    "invalid_request",
    "authentication_error",
    "permission_denied",
    "not_found",
    "conflict",
    "payment_error",
    "rate_limited",
    "unavailable",
    "api_error",
]


class FieldError(serializers.Serializer):
    param = serializers.CharField(allow_null=True, help_text="The field at fault")
    code = serializers.CharField()
    message = serializers.CharField()


class ErrorDetail(serializers.Serializer):
    type = serializers.ChoiceField(choices=ERROR_TYPES, help_text="The kind of error")
    code = serializers.CharField(help_text="Stable, machine-readable reason")
    message = serializers.CharField(help_text="A sentence for the developer")
    param = serializers.CharField(
        allow_null=True, help_text="The first field at fault, null when no single field is"
    )
    # A declared field shadows Serializer.errors only on the class, where DRF collects it.
    errors = FieldError(  # type: ignore[assignment]
        many=True,
        required=False,
        help_text="Every invalid field, the first one also in `param` (validation errors)",
    )


class Error(serializers.Serializer):
    """The body of every error answer."""

    error = ErrorDetail()


RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    location=OpenApiParameter.HEADER,
    response=[429],
    description="Seconds until the rate-limit window ends",
)

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "maxLength": 255},
    location=OpenApiParameter.HEADER,
    description="Retry safely: the same key with the same request within 24 hours gets the "
    "first answer again (with `Idempotent-Replayed: true`) and changes nothing more",
)

# What each status means on every endpoint; an operation adds its own sentence to these.
GENERIC = {
    400: "The request is invalid; `error.param` names the first field at fault.",
    401: "No API key, or one that is malformed, unknown, expired or revoked.",
    402: "The payment was refused (card declined, authentication failed).",
    403: "The key lacks the scope this operation needs, or its organization or role may not "
    "do this.",
    404: "Not found: a portal session names no organization of its own in `org`.",
    409: "The request conflicts with the current state.",
    429: "Too many requests for this key; retry after `Retry-After` seconds.",
    503: "The payment provider could not be reached; nothing was charged, retry later.",
}
# Every operation can answer these: authentication, scope and rate limit come before it runs,
# and a portal session must name one of its organizations in `org`.
ALWAYS = (401, 403, 404, 429)


def error_responses(errors: Mapping[int, str]) -> dict[int, OpenApiResponse]:
    """The error answers of an operation: those in ALWAYS, plus `errors` (status to what
    causes it on this operation; an empty text keeps the generic sentence)."""
    statuses = dict.fromkeys(ALWAYS, "") | dict(errors)
    return {
        status: OpenApiResponse(
            response=Error,
            description=f"{GENERIC[status]} {text}".strip() if text else GENERIC[status],
        )
        for status, text in sorted(statuses.items())
    }


# Links: kept on the operation as an extension until the postprocessing hook moves them into
# the answer they belong to (drf-spectacular has no words for links).
LINKS_KEY = "x-links"


def link(
    operation_id: str,
    description: str,
    parameters: Mapping[str, str] | None = None,
    body: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An OpenAPI link to `operation_id`: its parameters (and body fields) as runtime
    expressions on this answer, e.g. public_id="$response.body#/id"."""
    definition: dict[str, Any] = {"operationId": operation_id, "description": description}
    if parameters:
        definition["parameters"] = dict(parameters)
    if body:
        definition["requestBody"] = dict(body)
    return definition


BY_ID = "$response.body#/id"
# A POST's answers to its Idempotency-Key, and to a body that is not JSON.
POST_400 = "The body is not JSON, or the Idempotency-Key is over 255 characters."
POST_409 = "The Idempotency-Key is in use by a request still running, or was used with another."


def operation(
    *,
    summary: str,
    description: str,
    responses: Mapping[int, Any],
    errors: Mapping[int, str] | None = None,
    request: Any = ...,
    parameters: Sequence[OpenApiParameter] = (),
    links: Mapping[int, Mapping[str, dict[str, Any]]] | None = None,
    **more: Any,
) -> Any:
    """`extend_schema` for one operation: its summary, description, success answers and every
    error it can give, all in the shared error shape."""
    extra = dict(more)
    if request is not ...:
        extra["request"] = request  # None: no body
    if links:
        extra["extensions"] = {LINKS_KEY: {str(s): dict(v) for s, v in links.items()}}
    return extend_schema(
        summary=summary,
        description=description,
        responses={**responses, **error_responses(errors or {})},
        parameters=[*parameters, RETRY_AFTER],
        **extra,
    )


def move_links(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: each operation's links go into its answers."""
    for methods in result.get("paths", {}).values():
        for op in methods.values():
            if not isinstance(op, dict):
                continue
            for status, links in op.pop(LINKS_KEY, {}).items():
                op["responses"][status]["links"] = links
    return result
