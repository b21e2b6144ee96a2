"""REST API v1: the catalog a client chooses from. GPU models and regions, which regions offer
which model, and the list price of a GPU-hour there (an organization's negotiated rates are
not shown here: offerings price with them)."""

from decimal import Decimal

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import ApiKey
from core.api import ApiView as APIView
from core.openapi import link, operation

from . import selectors
from .models import GpuModel, ListPrice, Region

READ = ApiKey.Scope.RESERVATIONS_READ  # what searching offerings takes


def _price(value: Decimal) -> str:
    """Cents, or as many places as the price has (1.8750 keeps all four)."""
    places = max(2, -int(value.normalize().as_tuple().exponent))
    return f"{value:.{places}f}"


def _offered() -> dict[tuple[int, int], ListPrice]:
    """Where each GPU model can be reserved, keyed by (GPU model, region), with its price."""
    return {(p.gpu_model_id, p.region_id): p for p in selectors.offered_prices()}


def _gpu_models() -> QuerySet[GpuModel]:
    return GpuModel.objects.filter(is_active=True).order_by("slug")


def _regions() -> QuerySet[Region]:
    return Region.objects.filter(is_active=True).order_by("code")


class GpuModelRegionSerializer(serializers.Serializer):
    region = serializers.CharField(help_text="Region code, as `region` takes it")
    price_per_gpu_hour = serializers.DecimalField(
        max_digits=10,
        decimal_places=4,
        help_text="List price of one GPU for one hour there (before duration discounts)",
    )
    currency = serializers.CharField(help_text="ISO 4217, lower case")


class GpuModelSerializer(serializers.Serializer):
    slug = serializers.CharField(help_text="As `gpu_model` takes it")
    name = serializers.CharField()
    description = serializers.CharField()
    gpus_per_node = serializers.IntegerField(help_text="A block's node_count is in these nodes")
    gpu_memory_gb = serializers.IntegerField(help_text="Memory of one GPU, in GB")
    regions = GpuModelRegionSerializer(
        many=True, help_text="The regions that offer it, with its list price in each"
    )


class RegionSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="As `region` takes it")
    name = serializers.CharField()
    location = serializers.CharField()
    gpu_models = serializers.ListField(
        child=serializers.CharField(), help_text="Slugs of the GPU models offered there"
    )


class GpuModels(APIView):
    required_scopes = {"GET": READ}

    @operation(
        summary="List GPU models",
        description="Every GPU model `gpu_model` accepts, by slug, with the regions that offer "
        "it and its list price per GPU-hour in each. A model no region offers right now is "
        "listed with no regions.",
        responses={200: GpuModelSerializer(many=True)},
        links={
            200: {
                "SearchOfferings": link(
                    "offerings_list",
                    "Search offerings of the first model in its first region",
                    {
                        "query.gpu_model": "$response.body#/0/slug",
                        "query.region": "$response.body#/0/regions/0/region",
                    },
                )
            }
        },
    )
    def get(self, request: Request) -> Response:
        offered = _offered()
        regions = {region.pk: region.code for region in _regions()}
        models = [
            {
                "slug": model.slug,
                "name": model.name,
                "description": model.description,
                "gpus_per_node": model.gpus_per_node,
                "gpu_memory_gb": model.memory_gb,
                "regions": [
                    {
                        "region": code,
                        "price_per_gpu_hour": _price(price.price_per_gpu_hour),
                        "currency": price.currency,
                    }
                    for region_id, code in sorted(regions.items(), key=lambda item: item[1])
                    if (price := offered.get((model.pk, region_id))) is not None
                ],
            }
            for model in _gpu_models()
        ]
        return Response(models)


class Regions(APIView):
    required_scopes = {"GET": READ}

    @operation(
        summary="List regions",
        description="Every region `region` accepts, by code, with the GPU models offered there.",
        responses={200: RegionSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        offered = _offered()
        models = {model.pk: model.slug for model in _gpu_models()}
        regions = [
            {
                "code": region.code,
                "name": region.name,
                "location": region.location,
                "gpu_models": sorted(
                    slug for model_id, slug in models.items() if (model_id, region.pk) in offered
                ),
            }
            for region in _regions()
        ]
        return Response(regions)
