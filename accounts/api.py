from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from portal.api import ApiView as APIView

from . import api_keys
from .models import ApiKey


class VerifyKey(APIView):
    """For the model gateway: is this customer key good, and what may it do?"""

    required_scopes = {"POST": ApiKey.Scope.USAGE_WRITE}

    @extend_schema(
        request=inline_serializer("VerifyKeyRequest", {"key": serializers.CharField()}),
        responses=inline_serializer(
            "VerifyKeyResponse",
            {
                "valid": serializers.BooleanField(),
                "organization": serializers.CharField(allow_null=True),
                "scopes": serializers.ListField(child=serializers.CharField()),
                "inference_allowed": serializers.BooleanField(),
                "reason": serializers.CharField(allow_null=True),
            },
        ),
    )
    def post(self, request: Request) -> Response:
        raw = request.data.get("key") if isinstance(request.data, dict) else None
        if not isinstance(raw, str) or not raw:
            raise serializers.ValidationError({"key": ["Send the key to check as `key`."]})
        try:
            found = api_keys.authenticate(raw)
        except api_keys.KeyRefused as exc:
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
        inference = (
            ApiKey.Scope.INFERENCE in key.scopes
            and key.created_by is not None
            and (key.created_by.is_verified)
        )
        return Response(
            {
                "valid": True,
                "organization": found.organization.slug,
                "scopes": key.scopes,
                "inference_allowed": bool(inference),
                "reason": None if inference else "no_inference_scope_or_unverified",
            }
        )
