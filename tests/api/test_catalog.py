"""The catalog a client chooses from: GPU models with the regions that offer them and their
list price there, and regions with the models they offer. Only what can be reserved counts as
offered: an active cluster in an active region, with a list price."""

from decimal import Decimal

import pytest
from django.test import Client

from capacity.models import Cluster, GpuModel, ListPrice, Region
from tests.api.test_api import api, key_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def wider(catalog):
    """Beside the H100s: B200s in us-west at a price with four places, an H200 with no
    cluster anywhere, a region with a cluster but no price, and retired models and regions."""
    b200 = GpuModel.objects.create(slug="b200", name="B200", memory_gb=192, description="Blackwell")
    h200 = GpuModel.objects.create(slug="h200", name="H200", memory_gb=141)
    retired = GpuModel.objects.create(slug="a100", name="A100", memory_gb=80, is_active=False)
    eu = Region.objects.create(code="eu-north", name="EU North", location="Stockholm")
    closed = Region.objects.create(code="ap-south", name="AP South", is_active=False)
    ListPrice.objects.create(
        gpu_model=b200, region=catalog.west, price_per_gpu_hour=Decimal("4.1875")
    )
    ListPrice.objects.create(gpu_model=h200, region=catalog.east, price_per_gpu_hour=Decimal("3"))
    Cluster.objects.create(code="west-b200", region=catalog.west, gpu_model=b200)
    Cluster.objects.create(code="eu-h100", region=eu, gpu_model=catalog.h100)  # no price there
    ListPrice.objects.create(gpu_model=retired, region=catalog.east, price_per_gpu_hour=1)
    Cluster.objects.create(code="east-a100", region=catalog.east, gpu_model=retired)
    ListPrice.objects.create(gpu_model=catalog.h100, region=closed, price_per_gpu_hour=1)
    Cluster.objects.create(code="ap-h100", region=closed, gpu_model=catalog.h100)
    off = Cluster.objects.create(code="west-h200", region=catalog.west, gpu_model=h200)
    ListPrice.objects.create(gpu_model=h200, region=catalog.west, price_per_gpu_hour=3)
    Cluster.objects.filter(pk=off.pk).update(is_active=False)
    return catalog


def test_gpu_models_list_the_regions_that_offer_each_with_its_list_price(
    wider, organization, owner
):
    response = api(key_for(organization, owner, ["reservations:read"])).get("/api/v1/gpu-models/")
    assert response.status_code == 200
    assert response.json() == [
        {
            "slug": "b200",
            "name": "B200",
            "description": "Blackwell",
            "gpus_per_node": 8,
            "gpu_memory_gb": 192,
            "regions": [{"region": "us-west", "price_per_gpu_hour": "4.1875", "currency": "usd"}],
        },
        {
            "slug": "h100",
            "name": "H100",
            "description": "",
            "gpus_per_node": 8,
            "gpu_memory_gb": 80,
            "regions": [
                {"region": "us-east", "price_per_gpu_hour": "2.00", "currency": "usd"},
                {"region": "us-west", "price_per_gpu_hour": "1.50", "currency": "usd"},
            ],
        },
        {
            "slug": "h200",
            "name": "H200",
            "description": "",
            "gpus_per_node": 8,
            "gpu_memory_gb": 141,
            "regions": [],  # priced, but no cluster of it is open
        },
    ]


def test_regions_list_the_gpu_models_offered_there(wider, organization, owner):
    response = api(key_for(organization, owner, ["reservations:read"])).get("/api/v1/regions/")
    assert response.status_code == 200
    assert response.json() == [
        {"code": "eu-north", "name": "EU North", "location": "Stockholm", "gpu_models": []},
        {"code": "us-east", "name": "US East", "location": "", "gpu_models": ["h100"]},
        {"code": "us-west", "name": "US West", "location": "", "gpu_models": ["b200", "h100"]},
    ]


def test_the_values_listed_are_the_values_a_search_accepts(wider, organization, owner):
    client = api(key_for(organization, owner))
    slugs = [model["slug"] for model in client.get("/api/v1/gpu-models/").json()]
    codes = [region["code"] for region in client.get("/api/v1/regions/").json()]
    refused = client.get(
        "/api/v1/offerings/",
        {"gpu_model": "a100", "region": "ap-south", "node_count": 1, "duration_hours": 1},
    ).json()["error"]["errors"]
    assert [e["message"] for e in refused] == [
        f"Unknown GPU model 'a100'; choose one of: {', '.join(slugs)} (see /api/v1/gpu-models/).",
        f"Unknown region 'ap-south'; choose one of: {', '.join(codes)} (see /api/v1/regions/).",
    ]


def test_a_signed_in_member_reads_the_catalog_without_naming_an_organization(
    catalog, organization, owner
):
    client = Client()
    client.force_login(owner)
    assert [m["slug"] for m in client.get("/api/v1/gpu-models/").json()] == ["h100"]
    assert Client().get("/api/v1/regions/").status_code == 401


def test_the_catalog_needs_the_read_scope_searching_needs(catalog, organization, owner):
    usage_only = api(key_for(organization, owner, ["usage:write"]))
    for path in ("/api/v1/gpu-models/", "/api/v1/regions/", "/api/v1/offerings/"):
        refused = usage_only.get(path)
        assert (refused.status_code, refused.json()["error"]["message"]) == (
            403,
            "This key lacks the reservations:read scope.",
        )


def test_the_catalog_is_in_the_schema(db):
    import yaml

    schema = yaml.safe_load(Client().get("/api/v1/schema/").content)
    for path, summary, component in (
        ("/api/v1/gpu-models/", "List GPU models", "GpuModel"),
        ("/api/v1/regions/", "List regions", "Region"),
    ):
        operation = schema["paths"][path]["get"]
        assert operation["summary"] == summary
        assert operation["description"].startswith("Every ")
        items = operation["responses"]["200"]["content"]["application/json"]["schema"]["items"]
        assert items == {"$ref": f"#/components/schemas/{component}"}
    assert set(schema["components"]["schemas"]["GpuModel"]["properties"]) == {
        "slug", "name", "description", "gpus_per_node", "gpu_memory_gb", "regions"
    }  # fmt: skip
