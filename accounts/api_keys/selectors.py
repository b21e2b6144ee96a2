"""Reads: an organization's API keys."""

from django.db.models import QuerySet

from core.errors import NotFound

from ..models import ApiKey, Organization


def api_keys_for_org(organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=organization).select_related("created_by")


def api_key_for_org(organization: Organization, public_id: str) -> ApiKey:
    api_key = api_keys_for_org(organization).filter(public_id=public_id).first()
    if api_key is None:
        raise NotFound("No such API key.")
    return api_key
