"""REST API v1 for capacity: offerings search and reservations (list, create, retrieve, cancel;
extending is billing's, since it charges). Every read is scoped to the caller's organization;
another's ids are 404."""

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import QueryDict
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api_auth import actor_of, organization_of
from accounts.models import ApiKey
from core.api import ApiView as APIView
from core.errors import NotFound, ServiceError
from core.hooks import hook
from core.openapi import BY_ID, IDEMPOTENCY_KEY, POST_400, POST_409, link, operation

from . import offerings, selectors, services
from .forms import OfferingSearchForm
from .incidents import DEGRADED, FORCE_RELEASED, LATE_START
from .models import Extension, GpuModel, Region, Reservation
from .windows import Window, window_for

READ, WRITE = ApiKey.Scope.RESERVATIONS_READ, ApiKey.Scope.RESERVATIONS_WRITE
# Catalog values are data, not an enumeration fixed in the schema: these endpoints list them.
GPU_MODEL_TEXT = (
    "GPU model slug, e.g. h100-sxm; the valid ones are listed by GET /api/v1/gpu-models/"
)
REGION_TEXT = "Region code, e.g. us-east-1; the valid ones are listed by GET /api/v1/regions/"
# An SLA credit's cause (capacity measures it) and status (billing pays it back), as the API
# names them.
SLA_CREDIT_CAUSES = [DEGRADED, LATE_START, FORCE_RELEASED]
SLA_CREDIT_STATUSES = ["pending", "granted", "failed"]


def _utc(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def _same(value: object) -> object:
    return value


def _amount(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


# A reservation's document, key by key: the columns (lookups) it is written from and how. The
# list reads only these columns; the serializer's fields, the list's query and each document
# come from here.
DOCUMENT: tuple[tuple[str, tuple[str, ...], Callable[..., object]], ...] = (
    ("id", ("public_id",), _same),
    ("state", ("state",), _same),
    ("gpu_model", ("gpu_model__slug",), _same),
    ("region", ("region__code",), _same),
    ("node_count", ("node_count",), _same),
    ("starts_at", ("starts_at",), _utc),
    ("ends_at", ("ends_at",), _utc),
    ("duration_hours", ("starts_at", "ends_at"), lambda start, end: Window(start, end).hours),
    ("starts_on_payment", ("starts_on_payment",), _same),
    ("hold_expires_at", ("hold_expires_at",), _utc),
    ("price", ("total",), _amount),
    ("currency", ("currency",), _same),
    ("price_lines", ("price_lines",), _same),
    ("refund_due", ("refund_due",), _amount),
    ("created_at", ("created_at",), _utc),
)
COLUMNS = tuple(dict.fromkeys(column for _, columns, _ in DOCUMENT for column in columns))


def _document(row: Mapping[str, Any]) -> dict[str, object]:
    """Written from the row rather than field by field by the serializer: several times faster
    (lists are the API's hottest path); the serializer's declared fields document the shape."""
    return {key: write(*[row[c] for c in columns]) for key, columns, write in DOCUMENT}


def _column(reservation: Reservation, lookup: str) -> object:
    value: object = reservation
    for name in lookup.split("__"):
        value = getattr(value, name)
    return value


class ReservationSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    gpu_model: serializers.SlugRelatedField[GpuModel] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, help_text=GPU_MODEL_TEXT
    )
    region: serializers.SlugRelatedField[Region] = serializers.SlugRelatedField(
        slug_field="code", read_only=True, help_text=REGION_TEXT
    )
    price = serializers.DecimalField(source="total", max_digits=14, decimal_places=2)
    duration_hours = serializers.IntegerField()
    starts_on_payment = serializers.BooleanField()
    refund_due = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)

    def to_representation(self, instance: Reservation | dict) -> dict:
        if isinstance(instance, dict):  # a row of the list's values() query
            return _document(instance)
        return _document({column: _column(instance, column) for column in COLUMNS})

    class Meta:
        model = Reservation
        fields = [key for key, _, _ in DOCUMENT]
        read_only_fields = fields


class OfferingSerializer(serializers.Serializer):
    kind = serializers.CharField()
    gpu_model = serializers.CharField(source="gpu_model.slug", help_text=GPU_MODEL_TEXT)
    region = serializers.CharField(source="region.code", help_text=REGION_TEXT)
    node_count = serializers.IntegerField()
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField()
    duration_hours = serializers.IntegerField()
    starts_on_payment = serializers.BooleanField()
    available_nodes = serializers.IntegerField()
    price = serializers.DecimalField(source="quote.total", max_digits=14, decimal_places=2)
    currency = serializers.CharField(source="quote.currency")


# Where a client finds the values a field takes, named when a value is refused.
DISCOVERY = {"gpu_model": "api-gpu-models", "region": "api-regions"}


def _detail(field: str, error: ValidationError) -> serializers.ErrorDetail:
    message = " ".join(error.messages)
    if error.code == "invalid_choice" and field in DISCOVERY:
        message = f"{message.removesuffix('.')} (see {reverse(DISCOVERY[field])})."
    return serializers.ErrorDetail(message, code=error.code or "invalid")


def _form_errors(form: OfferingSearchForm) -> dict[str, list[serializers.ErrorDetail]]:
    """Every field's errors, in the form's field order (then the errors of the whole form).

    The form checks the start only with a valid duration; a start that is wrong whatever the
    duration is reported beside a wrong duration too."""
    found = dict(form.errors.as_data())
    start = form.cleaned_data.get("starts_at")
    if "duration_hours" in found and "starts_at" not in found and start is not None:
        try:
            window_for(starts_at=start, duration_hours=settings.CAPACITY_MIN_HOURS)
        except ServiceError as exc:
            if exc.param == "starts_at":
                found["starts_at"] = [ValidationError(exc.message, code=exc.code)]
    order = [*form.fields, "__all__"]
    return {
        "non_field_errors" if field == "__all__" else field: [
            _detail(field, error) for error in found[field]
        ]
        for field in sorted(found, key=lambda name: order.index(name) if name in order else 99)
    }


def _search_form(data: QueryDict | dict) -> OfferingSearchForm:
    form = OfferingSearchForm(data)
    if not form.is_valid():
        raise serializers.ValidationError(_form_errors(form))
    return form


NODE_COUNT = {"minimum": 1, "maximum": settings.CAPACITY_MAX_NODES}
DURATION_HOURS = {"minimum": settings.CAPACITY_MIN_HOURS, "maximum": settings.CAPACITY_MAX_HOURS}
# What the schema cannot say about a window, and the 400 it gives instead.
WINDOW_RULES = (
    "`starts_at` must fall on a whole UTC hour, not in the past and at most "
    f"{settings.CAPACITY_MAX_LEAD.days // 7} weeks ahead"
)


def _bounded(name: str, bounds: dict[str, int], description: str, example: int) -> OpenApiParameter:
    return OpenApiParameter(
        name,
        {"type": "integer", **bounds},  # a schema object is allowed as the type
        required=True,
        description=description,
        examples=[OpenApiExample(name, value=example)],
    )


SEARCH_PARAMETERS = [
    OpenApiParameter(
        "gpu_model",
        str,
        required=True,
        description=GPU_MODEL_TEXT,
        examples=[OpenApiExample("H100", value="h100-sxm")],
    ),
    OpenApiParameter(
        "region",
        str,
        description=f"{REGION_TEXT}. Any region when omitted",
        examples=[OpenApiExample("US East", value="us-east-1")],
    ),
    _bounded("node_count", NODE_COUNT, "Nodes in one block (8 GPUs each)", 1),
    OpenApiParameter(
        "starts_at",
        OpenApiTypes.DATETIME,
        description="ISO 8601 on a whole hour in UTC, at most "
        f"{settings.CAPACITY_MAX_LEAD.days // 7} weeks ahead; start now when omitted",
    ),
    _bounded("duration_hours", DURATION_HOURS, "Length of the block in whole hours", 4),
]


class Offerings(APIView):
    required_scopes = {"GET": READ}

    @operation(
        summary="Search offerings",
        description="Blocks that can be reserved for the asked GPU model, size and window, with "
        "their price for the calling organization: one per region with capacity (or only the "
        "asked region). Starting now, each offering starts the minute it is paid. "
        f"Nothing is held until a reservation is created. {WINDOW_RULES}.",
        parameters=SEARCH_PARAMETERS,
        responses={200: OfferingSerializer(many=True)},
        errors={
            400: f"An unknown GPU model or region, a size or length out of range, or a window "
            f"breaking a rule: {WINDOW_RULES}."
        },
        links={
            200: {
                "ReserveOffering": link(
                    "reservations_create",
                    "Reserve the first offering found",
                    body={
                        "gpu_model": "$response.body#/0/gpu_model",
                        "region": "$response.body#/0/region",
                        "node_count": "$response.body#/0/node_count",
                        "duration_hours": "$response.body#/0/duration_hours",
                    },
                )
            }
        },
    )
    def get(self, request: Request) -> Response:
        data = _search_form(request.query_params).cleaned_data
        results = offerings.search(
            organization=organization_of(request),
            gpu_model=data["gpu_model"],
            region=data["region"],
            node_count=data["node_count"],
            window=data["window"],
        )
        return Response(OfferingSerializer(results, many=True).data)


class _ClientToken(serializers.Serializer):
    """What a create takes beyond the search's fields (those are OfferingSearchForm's)."""

    client_token = serializers.CharField(
        required=False, min_length=1, max_length=64, trim_whitespace=False, help_text="Retry safely"
    )


class CreateReservation(_ClientToken):
    """The create's body as the schema shows it. OfferingSearchForm validates these fields, as
    it does the search's query; only the token is this serializer's to check."""

    gpu_model = serializers.CharField(help_text=GPU_MODEL_TEXT)
    region = serializers.CharField(help_text=REGION_TEXT)
    node_count = serializers.IntegerField(
        min_value=NODE_COUNT["minimum"], max_value=NODE_COUNT["maximum"]
    )
    starts_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text=(
            "ISO 8601 on a whole hour in UTC (09:00+05:30 is 03:30 UTC: refused). Omitted "
            "or null means start now: the block starts the "
            "minute its payment is confirmed and runs duration_hours from then (starts_at and "
            "ends_at move to the confirmation time)."
        ),
    )
    duration_hours = serializers.IntegerField(
        min_value=DURATION_HOURS["minimum"], max_value=DURATION_HOURS["maximum"]
    )


def reservation_links(expression: str) -> dict[str, dict[str, Any]]:
    """Where a reservation's id leads: read it, pay for it, extend it, cancel it."""
    path = {"path.public_id": expression}
    quote = {**path, "query.hours": "1"}
    return {
        "GetReservation": link("reservations_retrieve", "Read the reservation", path),
        "PayReservation": link("reservations_pay_create", "Pay for the held block", path),
        "QuoteExtension": link("reservations_extend_retrieve", "Price more hours", quote),
        "ExtendReservation": link("reservations_extend_create", "Buy more hours", path),
        "CancelReservation": link("reservations_cancel_create", "Cancel the block", path),
    }


SOLD_OUT = (
    "Sold out (no fabric has the nodes free for the whole window), too many blocks held "
    "unpaid, or the organization may not buy more now (credit limit, overdue invoice)."
)


class Reservations(APIView, ListAPIView):
    required_scopes = {"GET": READ, "POST": WRITE}
    serializer_class = ReservationSerializer

    @operation(
        summary="List reservations",
        description="The organization's reservations, newest first, a page at a time "
        "(follow `next`). Filter by state and by start.",
        parameters=[
            OpenApiParameter(
                "state", str, enum=Reservation.State.values, description="Only this state"
            ),
            OpenApiParameter(
                "starts_after", OpenApiTypes.DATETIME, description="Starting at or after (ISO 8601)"
            ),
            OpenApiParameter(
                "starts_before", OpenApiTypes.DATETIME, description="Starting before (ISO 8601)"
            ),
        ],
        responses={200: ReservationSerializer(many=True)},
        errors={400: "An unknown state, a start that is not ISO 8601, or a bad limit or cursor."},
    )
    def get(self, request: Request, *args: object, **kwargs: object) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Reservation, dict[str, Any]]:
        # Rows rather than models: the list is the API's hottest read, and building model
        # instances with their related rows cost more than the query itself.
        reservations = (
            selectors.reservations_for_org(organization_of(self.request))
            .select_related(None)
            .values(*COLUMNS)
        )
        params = self.request.query_params
        if "state" in params:  # present but empty is not a state either
            if params["state"] not in Reservation.State.values:
                states = ", ".join(Reservation.State.values)
                raise serializers.ValidationError(
                    {"state": [f"Unknown state; choose one of: {states}."]}
                )
            reservations = reservations.filter(state=params["state"])
        for param, lookup in (
            ("starts_after", "starts_at__gte"),
            ("starts_before", "starts_at__lt"),
        ):
            if param in params:
                try:
                    value = serializers.DateTimeField().to_internal_value(params[param])
                except serializers.ValidationError as exc:
                    raise serializers.ValidationError({param: exc.detail}) from None
                reservations = reservations.filter(**{lookup: value})
        return reservations

    @operation(
        summary="Reserve a block",
        description="Holds the nodes for the window and answers the reservation in state "
        f"`held` with its price; pay for it (POST …/pay/) before `hold_expires_at`, or the "
        f"hold lapses. The same `client_token` makes one reservation however often it is "
        f"sent. {WINDOW_RULES}; the key must act for a member who may reserve.",
        request=CreateReservation,
        parameters=[IDEMPOTENCY_KEY],
        responses={201: ReservationSerializer},
        errors={
            400: f"A field is missing or invalid, an unknown GPU model or region, or a window "
            f"breaking a rule: {WINDOW_RULES}. {POST_400}",
            409: f"{SOLD_OUT} {POST_409}",
        },
        links={201: reservation_links(BY_ID)},
    )
    def post(self, request: Request) -> Response:
        body = _ClientToken(data=request.data)
        if not body.is_valid() and not isinstance(request.data, Mapping):
            raise serializers.ValidationError(body.errors)  # not an object at all
        errors: dict[str, list[serializers.ErrorDetail]] = {}
        fields = cast(Mapping[str, Any], request.data).items()
        raw = {k: v for k, v in fields if k in OfferingSearchForm.base_fields}
        for name, value in list(raw.items()):
            if value is None:
                continue
            # The form's fields each take one string or number (true/false is neither).
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                errors[name] = [
                    serializers.ErrorDetail("Send one string or number here.", "invalid")
                ]
                del raw[name]
                continue
            raw[name] = str(value)  # as a form would send it
        if raw.get("starts_at") is None:
            raw.pop("starts_at", None)
        form = OfferingSearchForm(raw)
        if not form.is_valid():
            found = _form_errors(form)
            errors.update({name: found[name] for name in found if name not in errors})
        if "region" not in errors and form.cleaned_data.get("region", False) is None:
            # Required here, as in the portal's ReserveForm (the search takes any region).
            errors["region"] = [serializers.ErrorDetail("Choose a region.", code="required")]
        errors.update(body.errors)
        if errors:
            order = [*OfferingSearchForm.base_fields, *_ClientToken().fields, "non_field_errors"]
            raise serializers.ValidationError(
                {name: errors[name] for name in sorted(errors, key=order.index)}
            )
        data = form.cleaned_data
        reservation = services.reservation_create(
            organization=organization_of(request),
            user=actor_of(request),
            gpu_model=data["gpu_model"],
            region=data["region"],
            node_count=data["node_count"],
            window=data["window"],
            request_token=body.validated_data.get("client_token"),
        )
        return Response(ReservationSerializer(reservation).data, status=201)


def _reservation(request: Request, public_id: str) -> Reservation:
    reservation = selectors.reservation_for_org(organization_of(request), public_id)
    if reservation is None:
        raise NotFound("No such reservation.")
    return reservation


class PendingExtensionSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    hours = serializers.IntegerField()
    ends_at = serializers.DateTimeField()
    price = serializers.DecimalField(max_digits=14, decimal_places=2)
    currency = serializers.CharField()
    hold_expires_at = serializers.DateTimeField()


class CancellationRefundSerializer(serializers.Serializer):
    amount = serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        help_text="What canceling now refunds, to the cent: the policy's share of what was paid "
        "(payments less refunds, invoices less credits).",
    )
    percent = serializers.IntegerField(help_text="The cancellation policy's share, 0 to 100.")
    currency = serializers.CharField()


class SlaCreditSerializer(serializers.Serializer):
    id = serializers.CharField()
    cause = serializers.ChoiceField(
        choices=SLA_CREDIT_CAUSES,
        help_text="degraded: a node failed and no spare took its place; late_start: the nodes "
        "were up after the start; force_released: Hyperblock ended the block early.",
    )
    amount = serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        help_text="Credited for the time lost (never more than was paid for the block).",
    )
    currency = serializers.CharField()
    status = serializers.ChoiceField(
        choices=SLA_CREDIT_STATUSES,
        help_text="pending: being refunded or credited; granted: refunded to the card or "
        "credited on the invoice; failed: finance is looking at it.",
    )
    granted_at = serializers.DateTimeField(allow_null=True)


class ReservationDetailSerializer(ReservationSerializer):
    """One reservation, with the extension waiting for payment (its price is not in `price`,
    which counts only hours paid for or granted), the refund a cancellation would give now
    (null when it can no longer be canceled) and its SLA credits. These are the detail's
    alone: the list stays one query."""

    pending_extension = PendingExtensionSerializer(allow_null=True)
    cancellation_refund = CancellationRefundSerializer(allow_null=True)
    sla_credits = SlaCreditSerializer(many=True)

    def to_representation(self, instance: Reservation | dict) -> dict:
        document = super().to_representation(instance)
        assert isinstance(instance, Reservation)
        pending = instance.extensions.filter(
            state=Extension.State.HELD, hold_expires_at__gt=timezone.now()
        ).first()
        document["pending_extension"] = (
            None
            if pending is None
            else {
                "id": pending.public_id,
                "hours": pending.hours,
                "ends_at": _utc(pending.ends_at),
                "price": _amount(pending.price),
                "currency": pending.currency,
                "hold_expires_at": _utc(pending.hold_expires_at),
            }
        )
        quote = services.cancellation_quote(instance)
        document["cancellation_refund"] = (
            None
            if quote is None
            else {
                "amount": _amount(quote.amount),
                "percent": quote.percent,
                "currency": quote.currency,
            }
        )
        # Billing keeps the credits; capacity asks through the hook (it imports no billing).
        document["sla_credits"] = [
            {
                "id": credit["id"],
                "cause": credit["cause"],
                "amount": _amount(credit["amount"]),
                "currency": credit["currency"],
                "status": credit["status"],
                "granted_at": _utc(credit["granted_at"]),
            }
            for credit in hook("RESERVATION_SLA_CREDITS_HOOK")(instance)
        ]
        return document

    class Meta(ReservationSerializer.Meta):
        fields = [
            *ReservationSerializer.Meta.fields,
            "pending_extension",
            "cancellation_refund",
            "sla_credits",
        ]
        read_only_fields = fields


class ReservationDetail(APIView):
    required_scopes = {"GET": READ}

    @operation(
        summary="Get a reservation",
        description="One reservation with what the list leaves out: the extension waiting "
        "for payment, the refund canceling now would give, and its SLA credits.",
        responses={200: ReservationDetailSerializer},
        errors={404: "No reservation with this id in the caller's organization."},
        links={200: reservation_links(BY_ID)},
    )
    def get(self, request: Request, public_id: str) -> Response:
        return Response(ReservationDetailSerializer(_reservation(request, public_id)).data)


class CancelReservation(APIView):
    required_scopes = {"POST": WRITE}

    @operation(
        summary="Cancel a reservation",
        description="Cancels a held or scheduled block and releases its nodes. A paid block "
        "is refunded by the cancellation policy's share for the notice given "
        "(`cancellation_refund` on the reservation says how much, now); a held one was "
        "never charged.",
        request=inline_serializer(
            "CancelRequest",
            {"reason": serializers.CharField(required=False, help_text="Kept in the audit log")},
        ),
        parameters=[IDEMPOTENCY_KEY],
        responses={200: ReservationSerializer},
        errors={
            400: POST_400,
            404: "No reservation with this id in the caller's organization.",
            409: f"The block can no longer be canceled (it started, ended or was canceled). "
            f"{POST_409}",
        },
        links={
            200: {
                "GetReservation": link(
                    "reservations_retrieve", "Read it", {"path.public_id": BY_ID}
                )
            }
        },
    )
    def post(self, request: Request, public_id: str) -> Response:
        reason = request.data.get("reason", "") if isinstance(request.data, dict) else ""
        canceled = services.reservation_cancel(
            reservation=_reservation(request, public_id),
            actor=actor_of(request),
            reason=str(reason),
        )
        return Response(ReservationSerializer(canceled).data)
