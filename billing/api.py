import secrets
from collections.abc import Callable
from datetime import UTC
from typing import Any

from django.db.models import Model, QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema_view, inline_serializer
from rest_framework import serializers
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api_auth import actor_of, organization_of
from accounts.api_keys import api_key_verify
from accounts.api_keys.authentication import KeyRefused
from accounts.models import ApiKey, Organization, User
from accounts.permissions import Permission, can
from accounts.selectors import membership_for
from capacity import extensions as capacity_extensions
from capacity.api import _reservation
from capacity.models import Extension
from core.api import ApiView as APIView
from core.errors import NotAllowed
from core.openapi import IDEMPOTENCY_KEY, POST_400, POST_409, link, operation

from . import selectors
from .models import Invoice, Payment, Refund
from .services import extensions, payments


def _token(help_text: str, **more: Any) -> serializers.CharField:
    """A client token as sent: 1 to 64 characters, spaces kept."""
    return serializers.CharField(
        min_length=1, max_length=64, trim_whitespace=False, help_text=help_text, **more
    )


class _Pay(serializers.Serializer):
    client_token = _token("One per payment attempt")
    use_saved_card = serializers.BooleanField(default=False)


NO_RESERVATION = "No reservation with this id in the caller's organization."
TO_RESERVATION = {
    "GetReservation": link(
        "reservations_retrieve",
        "Read the reservation",
        {"path.public_id": "$request.path.public_id"},
    )
}


class PayReservation(APIView):
    required_scopes = {"POST": ApiKey.Scope.RESERVATIONS_WRITE}

    @operation(
        summary="Pay for a held reservation",
        description="Opens a Stripe PaymentIntent for the held block's price and answers its "
        "`client_secret` to confirm with Stripe.js, or with `use_saved_card` charges the "
        "organization's saved card at once (`client_secret` is set only when the bank asks "
        "for authentication). The block becomes `scheduled` once the payment succeeds. One "
        "`client_token` per attempt: the same token answers the same payment.",
        parameters=[IDEMPOTENCY_KEY],
        errors={
            400: f"`client_token` missing or too long, or no saved card to charge. {POST_400}",
            402: "",
            404: NO_RESERVATION,
            409: f"The reservation is not held any more (paid, expired, canceled) or cannot be "
            f"paid now. {POST_409}",
            503: "",
        },
        links={200: TO_RESERVATION},
        request=_Pay,
        responses={
            200: inline_serializer(
                "PayResponse",
                {
                    "payment": serializers.CharField(),
                    "status": serializers.CharField(),
                    "payment_intent": serializers.CharField(),
                    "client_secret": serializers.CharField(allow_null=True),
                },
            )
        },
    )
    def post(self, request: Request, public_id: str) -> Response:
        body = _Pay(data=request.data)
        body.is_valid(raise_exception=True)
        reservation = _reservation(request, public_id)
        token = body.validated_data["client_token"]
        if body.validated_data["use_saved_card"]:
            payment = payments.payment_by_saved_card_create(
                reservation=reservation, actor=actor_of(request), attempt_token=token
            )
            secret = (
                payments.client_secret_for_payment(payment)
                if payment.status == "requires_action"
                else None
            )
        else:
            payment, secret = payments.payment_intent_open(
                reservation=reservation, actor=actor_of(request), attempt_token=token
            )
        return Response(
            {
                "payment": payment.public_id,
                "status": payment.status,
                "payment_intent": payment.stripe_payment_intent_id,
                "client_secret": secret,
            }
        )


class _ExtendQuery(serializers.Serializer):
    hours = serializers.IntegerField(min_value=1, help_text="Extra hours to price")


class _Extend(serializers.Serializer):
    hours = serializers.IntegerField(min_value=1)
    client_token = _token("Retry safely: the same token, one extension", required=False)
    use_saved_card = serializers.BooleanField(
        default=True,
        help_text="Charge the saved default card off-session when there is one (else a "
        "PaymentIntent to confirm is returned)",
    )


EXTENSION_QUOTE = inline_serializer(
    "ExtensionQuote",
    {
        "hours": serializers.IntegerField(),
        "starts_at": serializers.DateTimeField(),
        "ends_at": serializers.DateTimeField(),
        "price": serializers.DecimalField(max_digits=14, decimal_places=2),
        "currency": serializers.CharField(),
        "price_lines": serializers.ListField(child=serializers.DictField()),
        "available": serializers.BooleanField(help_text="Whether the nodes are free for it"),
    },
)
EXTENSION = inline_serializer(
    "Extension",
    {
        "id": serializers.CharField(),
        "reservation": serializers.CharField(),
        "state": serializers.ChoiceField(choices=Extension.State.values),
        "hours": serializers.IntegerField(),
        "starts_at": serializers.DateTimeField(),
        "ends_at": serializers.DateTimeField(),
        "price": serializers.DecimalField(max_digits=14, decimal_places=2),
        "currency": serializers.CharField(),
        "hold_expires_at": serializers.DateTimeField(allow_null=True),
        "payment": serializers.CharField(allow_null=True),
        "payment_status": serializers.CharField(allow_null=True),
        "payment_intent": serializers.CharField(
            allow_null=True, help_text="Set when a card must be confirmed"
        ),
        "client_secret": serializers.CharField(
            allow_null=True, help_text="Confirm with Stripe.js when set"
        ),
    },
)


def _utc(moment: object) -> str | None:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None  # type: ignore[attr-defined]


def extension_document(started: extensions.ExtensionStarted) -> dict[str, object]:
    extension, payment = started.extension, started.payment
    confirm = started.client_secret is not None and payment is not None
    return {
        "id": extension.public_id,
        "reservation": extension.reservation.public_id,
        "state": extension.state,
        "hours": extension.hours,
        "starts_at": _utc(extension.starts_at),
        "ends_at": _utc(extension.ends_at),
        "price": f"{extension.price:.2f}",
        "currency": extension.currency,
        "hold_expires_at": _utc(extension.hold_expires_at),
        "payment": payment.public_id if payment else None,
        "payment_status": payment.status if payment else None,
        "payment_intent": payment.stripe_payment_intent_id if confirm and payment else None,
        "client_secret": started.client_secret if confirm else None,
    }


class ReservationExtend(APIView):
    """GET quotes `hours` more (changing nothing); POST holds them and charges for them.

    The end moves only once the payment succeeds: at once with a saved card that needs no
    authentication, else after the client confirms `client_secret` with Stripe.js (the
    webhook then applies it). On invoice terms the hours are invoiced within the credit limit
    and applied once the invoice is issued (no card: `payment` and `client_secret` are null)."""

    required_scopes = {
        "GET": ApiKey.Scope.RESERVATIONS_READ,
        "POST": ApiKey.Scope.RESERVATIONS_WRITE,
    }

    @operation(
        summary="Price an extension",
        description="What `hours` more at the end of the block would cost and whether its "
        "nodes are free for them. Changes nothing.",
        parameters=[
            OpenApiParameter(
                "hours",
                {"type": "integer", "minimum": 1},
                required=True,
                description="Extra hours to price",
            )
        ],
        responses={200: EXTENSION_QUOTE},
        errors={
            400: "`hours` missing, not a whole number, below 1 or past the longest block.",
            404: NO_RESERVATION,
            409: "The block cannot be extended any more (it ended, was canceled, or is ending).",
        },
    )
    def get(self, request: Request, public_id: str) -> Response:
        reservation = _reservation(request, public_id)  # another's is 404, whatever it asks
        query = _ExtendQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        quote = capacity_extensions.extension_quote(
            reservation=reservation, hours=query.validated_data["hours"]
        )
        return Response(
            {
                "hours": quote.hours,
                "starts_at": _utc(quote.starts_at),
                "ends_at": _utc(quote.ends_at),
                "price": f"{quote.price:.2f}",
                "currency": quote.currency,
                "price_lines": quote.quote.lines_json(),
                "available": quote.available,
            }
        )

    @operation(
        summary="Extend a reservation",
        description="Holds `hours` more on the block's own nodes and charges for them: at once "
        "with the saved card when no authentication is needed, else the answer carries a "
        "`client_secret` to confirm with Stripe.js. The end moves only once the payment "
        "succeeds; on invoice terms once the extension's invoice is issued.",
        request=_Extend,
        parameters=[IDEMPOTENCY_KEY],
        responses={202: EXTENSION},
        errors={
            400: f"`hours` missing or invalid, or `client_token` too long. {POST_400}",
            402: "",
            404: NO_RESERVATION,
            409: f"The nodes are booked right after the block, an extension is already "
            f"waiting for payment, the block cannot be extended any more, or the organization "
            f"may not buy more now. {POST_409}",
            503: "",
        },
        links={202: TO_RESERVATION},
    )
    def post(self, request: Request, public_id: str) -> Response:
        reservation = _reservation(request, public_id)
        body = _Extend(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        started = extensions.extension_start(
            reservation=reservation,
            actor=actor_of(request),
            hours=data["hours"],
            attempt_token=data.get("client_token") or secrets.token_urlsafe(24),
            collect=extensions.SAVED_CARD if data["use_saved_card"] else extensions.PAYMENT_INTENT,
            fallback=extensions.PAYMENT_INTENT,
        )
        return Response(extension_document(started), status=202)


class PaymentSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    reservation = serializers.CharField(source="reservation.public_id")
    extension = serializers.CharField(
        source="extension.public_id",
        allow_null=True,
        default=None,
        help_text="Set when the payment is for an extension of the reservation",
    )

    class Meta:
        model = Payment
        fields = [
            "id",
            "reservation",
            "extension",
            "status",
            "amount",
            "amount_refunded",
            "currency",
            "card_brand",
            "card_last4",
            "created_at",
            "succeeded_at",
        ]
        read_only_fields = fields


class RefundSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    payment = serializers.CharField(source="payment.public_id")

    class Meta:
        model = Refund
        fields = ["id", "payment", "status", "amount", "currency", "reason", "created_at"]
        read_only_fields = fields


class InvoiceSerializer(serializers.ModelSerializer):
    reservation = serializers.CharField(source="reservation.public_id")
    extension = serializers.CharField(
        source="extension.public_id",
        allow_null=True,
        default=None,
        help_text="Set on an extension's invoice (its extra hours); null on the block's own",
    )

    class Meta:
        model = Invoice
        fields = [
            "number",
            "reservation",
            "extension",
            "status",
            "amount",
            "currency",
            "due_at",
            "hosted_invoice_url",
            "created_at",
            "paid_at",
        ]
        read_only_fields = fields


class _BillingList(APIView, ListAPIView):
    required_scopes = {"GET": ApiKey.Scope.BILLING_READ}
    selector: Callable[[Organization], QuerySet[Model]]

    def get_queryset(self) -> QuerySet[Model]:
        organization = organization_of(self.request)
        role_check(self.request, organization)
        return type(self).selector(organization)


def role_check(request: Request, organization: Organization) -> None:
    """Session users need a billing role; keys carry the billing:read scope instead."""
    if isinstance(request.auth, ApiKey):
        return
    user = request.user
    membership = (
        membership_for(user=user, slug=organization.slug) if isinstance(user, User) else None
    )
    if membership is None or not can(membership.role, Permission.VIEW_BILLING):
        raise NotAllowed("Your role cannot see billing.")


LIST_400 = "A bad `limit` or `cursor`."
NO_BILLING_ROLE = "A portal session's role may not see billing."


@extend_schema_view(
    get=operation(
        summary="List payments",
        description="Card payments for the organization's reservations and extensions, "
        "newest first, with what was refunded of each.",
        responses={200: PaymentSerializer(many=True)},
        errors={400: LIST_400, 403: NO_BILLING_ROLE},
    )
)
class Payments(_BillingList):
    serializer_class = PaymentSerializer
    selector = staticmethod(selectors.payments_for_org)


@extend_schema_view(
    get=operation(
        summary="List refunds",
        description="Refunds paid back to cards (cancellations, SLA credits), newest first.",
        responses={200: RefundSerializer(many=True)},
        errors={400: LIST_400, 403: NO_BILLING_ROLE},
    )
)
class Refunds(_BillingList):
    serializer_class = RefundSerializer
    selector = staticmethod(selectors.refunds_for_org)


@extend_schema_view(
    get=operation(
        summary="List invoices",
        description="Invoices of an organization on invoice terms (a block's and each "
        "extension's), newest first, with a link to pay each online.",
        responses={200: InvoiceSerializer(many=True)},
        errors={400: LIST_400, 403: NO_BILLING_ROLE},
    )
)
class Invoices(_BillingList):
    serializer_class = InvoiceSerializer
    selector = staticmethod(selectors.invoices_for_org)


def _inference(key: ApiKey, organization: Organization) -> tuple[bool, str | None]:
    """May this key call hosted models: its scope, a verified owner, and no unpaid balance
    over the organization's credit limit."""
    if ApiKey.Scope.INFERENCE not in key.scopes:
        return False, "no_inference_scope"
    if key.created_by is None or not key.created_by.is_verified:
        return False, "owner_unverified"
    if selectors.balance_for_org(organization) > organization.credit_limit:
        return False, "over_credit_limit"
    return True, None


class VerifyKey(APIView):
    required_scopes = {"POST": ApiKey.Scope.USAGE_WRITE}

    @operation(
        summary="Verify a customer's key",
        description="For the model gateway: is this customer key good, whose is it, and may "
        "it call hosted models (`inference_allowed`, with the `reason` when not). A refused "
        "key is an answer (`valid: false`), not an error. Only the platform's own key may ask.",
        request=inline_serializer(
            "VerifyKeyRequest",
            {
                "key": serializers.CharField(
                    min_length=1, trim_whitespace=False, help_text="The key to check"
                )
            },
        ),
        parameters=[IDEMPOTENCY_KEY],
        responses={
            200: inline_serializer(
                "VerifyKeyResponse",
                {
                    "valid": serializers.BooleanField(),
                    "organization": serializers.CharField(allow_null=True),
                    "scopes": serializers.ListField(child=serializers.CharField()),
                    "inference_allowed": serializers.BooleanField(),
                    "reason": serializers.CharField(allow_null=True),
                },
            )
        },
        errors={
            400: f"`key` missing or not a string. {POST_400}",
            403: "The calling key is not the platform's.",
            409: POST_409,
        },
    )
    def post(self, request: Request) -> Response:
        raw = request.data.get("key") if isinstance(request.data, dict) else None
        if not isinstance(raw, str) or not raw:
            raise serializers.ValidationError({"key": ["Send the key to check as `key`."]})
        try:
            found = api_key_verify(raw, caller=request.auth)
        except KeyRefused as exc:
            return Response(
                {
                    "valid": False,
                    "organization": None,
                    "scopes": [],
                    "inference_allowed": False,
                    "reason": exc.code,
                }
            )
        key = found.api_key
        inference, reason = _inference(key, found.organization)
        return Response(
            {
                "valid": True,
                "organization": found.organization.slug,
                "scopes": key.scopes,
                "inference_allowed": bool(inference),
                "reason": reason,
            }
        )
