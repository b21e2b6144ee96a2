"""A node never changes cluster, nor a cluster its pool, in the admin: bookings follow the
cluster, so such an edit could sell a node twice."""

import pytest

from capacity.models import Cluster, Node
from tests.capacity.conftest import catalog  # noqa: F401

from .conftest import make_staff, verified_client

pytestmark = pytest.mark.django_db


def test_a_nodes_cluster_and_a_clusters_pool_are_fixed_once_made(catalog):
    node = Node.objects.filter(cluster=catalog.east_a).first()
    client = verified_client(make_staff("Operations"))
    response = client.post(
        f"/admin/capacity/node/{node.pk}/change/",
        {"hostname": node.hostname, "cluster": catalog.west_a.pk, "gpu_count": 8},
    )
    assert response.status_code == 302
    node.refresh_from_db()
    assert node.cluster == catalog.east_a
    page = client.get(f"/admin/capacity/node/{node.pk}/change/").content.decode()
    assert 'name="cluster"' not in page
    assert 'name="cluster"' in client.get("/admin/capacity/node/add/").content.decode()

    client.post(
        f"/admin/capacity/cluster/{catalog.east_a.pk}/change/",
        {
            "code": "east-a",
            "region": catalog.west.pk,
            "gpu_model": catalog.h100.pk,
            "fabric": "InfiniBand NDR 400 Gb/s",
            "is_active": "on",
        },
    )
    assert Cluster.objects.get(pk=catalog.east_a.pk).region == catalog.east


@pytest.mark.parametrize(("group", "shown"), [("Operations", True), ("Sales", False)])
def test_the_cluster_timeline_is_linked_only_for_those_who_may_open_it(catalog, group, shown):
    from capacity import services
    from capacity.windows import Window
    from tests.capacity.conftest import NEXT_HOUR, hours
    from tests.conftest import member_of
    from tests.factories import OrganizationFactory

    org = OrganizationFactory()
    reservation = services.reservation_create(
        organization=org, user=member_of(org, "owner"), gpu_model=catalog.h100,
        region=catalog.east, node_count=1, window=Window(NEXT_HOUR, NEXT_HOUR + hours(4)),
    )  # fmt: skip
    client = verified_client(make_staff(group))
    page = client.get(f"/admin/capacity/reservation/{reservation.pk}/change/").content.decode()
    assert ("Cluster timeline" in page) is shown


def test_an_operations_action_takes_at_most_100_rows(catalog):
    from capacity.models import Node

    Node.objects.bulk_create(
        Node(cluster=catalog.east_b, hostname=f"bulk-{n:03d}") for n in range(101)
    )
    ids = list(Node.objects.filter(hostname__startswith="bulk-").values_list("pk", flat=True))
    client = verified_client(make_staff("Operations"))
    response = client.post(
        "/admin/capacity/node/", {"action": "drain", "_selected_action": ids}, follow=True
    )
    assert [str(m) for m in response.context["messages"]] == ["Select at most 100 rows at a time."]
    assert Node.objects.filter(status="maintenance").count() == 0
    page = client.post("/admin/capacity/node/", {"action": "drain", "_selected_action": ids[:100]})
    assert b"Drain nodes into maintenance" in page.content
