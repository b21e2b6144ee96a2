from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema_view
from rest_framework import serializers
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import ApiView as APIView
from core.openapi import IDEMPOTENCY_KEY, POST_400, POST_409, link, operation

from .api_auth import actor_of, organization_of
from .api_keys import api_key_revoke
from .api_keys.selectors import api_key_for_org, api_keys_for_org
from .models import ApiKey
from .permissions import key_lists_only_own


class KeySerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    created_by = serializers.EmailField(source="created_by.email", allow_null=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "kind",
            "scopes",
            "created_by",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]
        read_only_fields = fields


@extend_schema_view(
    get=operation(
        summary="List API keys",
        description="The organization's API keys, newest first, without their secrets; a key "
        "made by a member lists only that member's keys.",
        responses={200: KeySerializer(many=True)},
        errors={400: "A bad `limit` or `cursor`."},
        links={
            200: {
                "RevokeKey": link(
                    "keys_revoke_create",
                    "Revoke the newest key",
                    {"path.public_id": "$response.body#/results/0/id"},
                )
            }
        },
    )
)
class Keys(APIView, ListAPIView):
    serializer_class = KeySerializer
    required_scopes = {"GET": ApiKey.Scope.KEYS_READ}

    def get_queryset(self) -> QuerySet[ApiKey]:
        keys = api_keys_for_org(organization_of(self.request))
        auth = self.request.auth
        if isinstance(auth, ApiKey) and key_lists_only_own(getattr(auth, "maker_role", None)):
            keys = keys.filter(created_by_id=auth.created_by_id)  # a member's key sees its own
        return keys


class RevokeKey(APIView):
    required_scopes = {"POST": ApiKey.Scope.KEYS_WRITE}

    @operation(
        summary="Revoke an API key",
        description="Stops the key working at once; it stays in the list with `revoked_at`. "
        "Owners and admins revoke any key, others only the keys they made.",
        request=None,
        parameters=[IDEMPOTENCY_KEY],
        responses={200: KeySerializer},
        errors={
            400: f"The key is already revoked. {POST_400}",
            403: "The caller's role may not revoke this key.",
            404: "No key with this id in the caller's organization.",
            409: POST_409,
        },
    )
    def post(self, request: Request, public_id: str) -> Response:
        api_key = api_key_for_org(organization_of(request), public_id)
        revoked = api_key_revoke(api_key=api_key, actor=actor_of(request))
        return Response(KeySerializer(revoked).data)
