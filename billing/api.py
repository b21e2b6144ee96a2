from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import ApiKey
from capacity.api import _reservation, actor_of
from portal.api import ApiView as APIView

from . import services


class _Pay(serializers.Serializer):
    client_token = serializers.CharField(max_length=64, help_text="One per payment attempt")
    use_saved_card = serializers.BooleanField(default=False)


class PayReservation(APIView):
    """Pay a held reservation: a PaymentIntent to confirm client-side, or the saved card."""

    required_scopes = {"POST": ApiKey.Scope.RESERVATIONS_WRITE}

    @extend_schema(
        request=_Pay,
        responses=inline_serializer(
            "PayResponse",
            {
                "payment": serializers.CharField(),
                "status": serializers.CharField(),
                "payment_intent": serializers.CharField(),
                "client_secret": serializers.CharField(allow_null=True),
            },
        ),
    )
    def post(self, request: Request, public_id: str) -> Response:
        body = _Pay(data=request.data)
        body.is_valid(raise_exception=True)
        reservation = _reservation(request, public_id)
        token = body.validated_data["client_token"]
        if body.validated_data["use_saved_card"]:
            payment = services.pay_with_saved_card(
                reservation=reservation, actor=actor_of(request), attempt_token=token
            )
            secret = (
                services.client_secret(payment) if payment.status == "requires_action" else None
            )
        else:
            payment, secret = services.payment_intent_open(
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
