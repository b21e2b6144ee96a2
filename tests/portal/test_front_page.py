"""The public front page: what is sold, the catalog's list prices, the way in."""

import re
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from billing.models import ModelPrice
from capacity import selectors
from capacity.models import Cluster, GpuModel, ListPrice, Region
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def price_list() -> None:
    """Two models for sale in two regions; one model and one region that are not, and a price
    where no cluster of the model stands."""
    h100 = GpuModel.objects.create(slug="h100", name="H100 & co", memory_gb=80, sort_order=1)
    b200 = GpuModel.objects.create(
        slug="b200", name="B200", memory_gb=192, gpus_per_node=4, sort_order=2
    )
    retired = GpuModel.objects.create(slug="v100", name="V100", memory_gb=32, is_active=False)
    GpuModel.objects.create(slug="unpriced", name="Unpriced", memory_gb=1)
    east = Region.objects.create(code="us-east", name="US East", location="Ashburn")
    west = Region.objects.create(code="us-west", name="US West")
    closed = Region.objects.create(code="closed", name="Closed", is_active=False)
    for gpu, region, price in [
        (h100, east, "2.49"),
        (h100, west, "2.3900"),
        (b200, east, "4.99"),
        (h100, closed, "0.10"),
        (retired, east, "0.50"),
        (b200, west, "4.79"),  # priced, but no B200 cluster stands in US West
    ]:
        ListPrice.objects.create(gpu_model=gpu, region=region, price_per_gpu_hour=Decimal(price))
    for gpu, region in [(h100, east), (h100, west), (b200, east), (h100, closed), (retired, east)]:
        Cluster.objects.create(code=f"{region.code}-{gpu.slug}", region=region, gpu_model=gpu)


def test_the_price_list_has_what_is_for_sale_in_catalog_order(
    price_list, django_assert_num_queries
):
    with django_assert_num_queries(1):
        entries = selectors.price_list()
    rows = [
        (
            e.gpu_model.slug,
            e.lowest.per_gpu_hour,
            [(p.region.code, p.per_gpu_hour, p.per_node_hour, p.currency) for p in e.prices],
        )
        for e in entries
    ]
    assert rows == [
        (
            "h100",
            Decimal("2.39"),
            [
                ("us-east", Decimal("2.49"), Decimal("19.92"), "usd"),
                ("us-west", Decimal("2.39"), Decimal("19.12"), "usd"),
            ],
        ),
        ("b200", Decimal("4.99"), [("us-east", Decimal("4.99"), Decimal("19.96"), "usd")]),
    ]


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_a_visitor_sees_the_offer_the_prices_and_the_ways_in(price_list):
    ModelPrice.objects.create(
        model="llama-3-70b", input_per_million=Decimal("0.59"), output_per_million=Decimal("0.79")
    )
    response = Client().get("/")
    assert response.status_code == 200
    html = response.text
    assert "<title>Hyperblock · GPU clusters by the hour</title>" in html
    text = _text(html)
    assert "GPU clusters by the hour, reserved in minutes" in text
    assert "H100 &amp; co from $2.39 / GPU-hour 80 GB per GPU · 8 GPUs per node" in text
    assert "US East Ashburn $2.49 $19.92 US West us-west $2.39 $19.12" in text
    assert "B200 from $4.99 / GPU-hour 192 GB per GPU · 4 GPUs per node" in text
    assert "US East Ashburn $4.99 $19.96" in text
    assert "llama-3-70b $0.59 $0.79" in text
    assert "5% off" not in text  # no duration discounts in this catalog
    for hidden in ("V100", "Unpriced", "Closed", "$0.10", "$0.50"):
        assert hidden not in text
    assert html.count(f'href="{reverse("signup")}"') == 3
    assert html.count(f'href="{reverse("login")}"') == 3


def test_the_front_page_without_prices_says_so():
    text = _text(Client().get("/").text)
    assert "Prices are published here once capacity is on sale." in text
    assert "Hosted model prices" not in text


def test_a_signed_in_member_goes_on_to_their_organization(organization, owner):
    response = client_for(owner).get("/")
    assert (response.status_code, response["Location"]) == (302, f"/o/{organization.slug}/")


def test_a_signed_in_person_without_an_organization_is_asked_to_make_one():
    response = client_for(UserFactory()).get("/")
    assert (response.status_code, response["Location"]) == (302, "/organizations/new/")
