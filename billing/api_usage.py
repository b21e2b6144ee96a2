"""REST API v1 for token usage: the model gateway reports it, a customer reads a summary."""

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api_auth import organization_of
from accounts.models import ApiKey
from core.api import ApiView as APIView
from core.openapi import IDEMPOTENCY_KEY, POST_400, POST_409, operation

from . import selectors
from .services import usage

USAGE_MAX_DAYS = 90


def _text(longest: int, help_text: str, **more: Any) -> serializers.CharField:
    return serializers.CharField(
        min_length=1, max_length=longest, trim_whitespace=False, help_text=help_text, **more
    )


def _tokens() -> serializers.IntegerField:
    return serializers.IntegerField(min_value=0, max_value=usage.MAX_TOKENS)


USAGE_ACCEPTED = inline_serializer(
    "UsageAccepted",
    {
        "accepted": serializers.IntegerField(),
        "duplicates": serializers.IntegerField(),
        "errors": serializers.ListField(
            child=serializers.DictField(), help_text="The refused events, by position"
        ),
    },
)


def _by_position(errors: list[tuple[int, usage.EventError]]) -> dict[Any, Any]:
    """`{3: {"model": [...]}}`, which the error handler names `events[3].model` (DRF's list
    fields key their items' errors by position too)."""
    found: dict[Any, Any] = {}
    for index, error in errors:
        detail = serializers.ErrorDetail(error.message, code=error.code)
        if error.field is None:  # not an object: its only error
            found[index] = [detail]
        else:
            found.setdefault(index, {}).setdefault(error.field, []).append(detail)
    return found


class Usage(APIView):
    required_scopes = {"POST": ApiKey.Scope.USAGE_WRITE, "GET": ApiKey.Scope.BILLING_READ}

    @operation(
        summary="Report token usage",
        description="For the model gateway: up to 1,000 usage events in one batch. Each "
        "event's `id` makes it count once however often it is sent. Answers 200 when every "
        "event was taken (or was a duplicate), 207 when some were refused: `errors` names each "
        "by its position.",
        parameters=[IDEMPOTENCY_KEY],
        errors={
            400: f"`events` is not a list of 1 to 1,000 events, an event is not of the shape "
            f"shown (each one named by position in `error.errors`, e.g. `events[3].model`), or "
            f"the caller is not an API key. {POST_400}",
            409: POST_409,
        },
        request=inline_serializer(
            "UsageBatch",
            {
                "events": serializers.ListField(
                    min_length=1,
                    max_length=usage.MAX_BATCH,
                    child=inline_serializer(
                        "UsageEventIn",
                        {
                            "id": _text(usage.MAX_ID, "Counts the event once"),
                            "key": _text(
                                usage.MAX_KEY, "Public id", required=False, allow_null=True
                            ),
                            "model": _text(usage.MAX_MODEL, "A hosted model's name"),
                            "input_tokens": _tokens(),
                            "output_tokens": _tokens(),
                            "time": serializers.DateTimeField(help_text="With a time zone"),
                        },
                    ),
                )
            },
        ),
        responses={200: USAGE_ACCEPTED, 207: USAGE_ACCEPTED},
    )
    def post(self, request: Request) -> Response:
        if not isinstance(request.auth, ApiKey):
            raise serializers.ValidationError({"events": ["Usage is reported with an API key."]})
        events = request.data.get("events") if isinstance(request.data, dict) else None
        try:
            result = usage.usage_ingest(reporter=request.auth, events=events)
        except usage.MalformedEvents as exc:
            raise serializers.ValidationError({"events": _by_position(exc.errors)}) from exc
        except ValueError as exc:
            raise serializers.ValidationError({"events": [str(exc)]}) from exc
        return Response(result, status=207 if result["errors"] else 200)

    @operation(
        summary="Summarize token usage",
        description="Tokens and cost per day and model over the last `days` days, for the "
        "organization's keys.",
        parameters=[
            OpenApiParameter(
                "days",
                {"type": "integer", "minimum": 1, "maximum": USAGE_MAX_DAYS, "default": 30},
                description=f"How far back, 1 to {USAGE_MAX_DAYS} days",
            )
        ],
        responses={
            200: inline_serializer(
                "UsageSummary",
                {"days": serializers.ListField(child=serializers.DictField())},
            )
        },
        errors={400: f"`days` is not a whole number from 1 to {USAGE_MAX_DAYS}."},
    )
    def get(self, request: Request) -> Response:
        days = request.query_params.get("days", "30")
        if not (days.isascii() and days.isdigit()) or not 1 <= int(days) <= USAGE_MAX_DAYS:
            raise serializers.ValidationError(
                {"days": [f"Give a whole number of days from 1 to {USAGE_MAX_DAYS}."]}
            )
        since = timezone.now() - timedelta(days=int(days))
        rows = selectors.usage_by_day_for_org(organization_of(request), since)
        return Response(
            {
                "days": [
                    {
                        "date": r["hour__date"].isoformat(),
                        "model": r["model"],
                        "input_tokens": r["input_tokens"],
                        "output_tokens": r["output_tokens"],
                        "cost": f"{r['cost']:.2f}",
                    }
                    for r in rows
                ]
            }
        )
