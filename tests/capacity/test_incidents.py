"""Incidents are deduplicated by their kind and their object (reservation, node or both), never
by their text: one open incident per kind and object, whatever each report says."""

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from capacity import provisioning
from capacity.incidents import incident_open
from capacity.models import Allocation, Incident, Node, Reservation, SimulatedNode

from .test_provisioning import scheduled

K = Incident.Kind


def _open() -> list[tuple[str, int | None, int | None, str]]:
    return list(
        Incident.objects.filter(resolved_at__isnull=True)
        .order_by("id")
        .values_list("kind", "reservation_id", "node_id", "detail")
    )


def test_two_reports_of_one_kind_for_one_object_are_one_incident(catalog):
    node = catalog.east_a.nodes.first()
    first, opened = incident_open(kind=K.NODE_UNHEALTHY, node=node, detail="GPU 3 fell off")
    again, opened_again = incident_open(kind=K.NODE_UNHEALTHY, node=node, detail="PSU failed")
    assert (opened, opened_again, again.pk) == (True, False, first.pk)
    assert _open() == [("node_unhealthy", None, node.pk, "GPU 3 fell off")]


def test_one_text_for_two_objects_is_two_incidents(catalog):
    one, other = catalog.east_a.nodes.order_by("pk")[:2]
    for node in (one, other):
        incident_open(kind=K.NODE_UNHEALTHY, node=node, detail="Slurm: DOWN")
    assert _open() == [
        ("node_unhealthy", None, one.pk, "Slurm: DOWN"),
        ("node_unhealthy", None, other.pk, "Slurm: DOWN"),
    ]


def test_the_kind_and_each_object_tell_incidents_apart(catalog, organization, owner):
    reservation = scheduled(organization, owner, catalog)
    node = Allocation.objects.filter(reservation=reservation).first().node
    incident_open(kind=K.NODE_UNHEALTHY, node=node, detail="x")
    incident_open(kind=K.NODE_UNHEALTHY, node=node, reservation=reservation, detail="x")
    incident_open(kind=K.SYNC_FAILED, reservation=reservation, detail="x")
    incident_open(kind=K.TEARDOWN_FAILED, reservation=reservation, detail="x")
    assert len(_open()) == 4


def test_a_resolved_incident_leaves_room_for_a_new_one(catalog):
    node = catalog.east_a.nodes.first()
    first, _ = incident_open(kind=K.NODE_UNHEALTHY, node=node, detail="first")
    Incident.objects.filter(pk=first.pk).update(resolved_at=timezone.now())
    second, opened = incident_open(kind=K.NODE_UNHEALTHY, node=node, detail="second")
    assert opened
    assert second.pk != first.pk
    assert _open() == [("node_unhealthy", None, node.pk, "second")]


@pytest.mark.parametrize("with_node", [False, True])
def test_the_database_refuses_a_second_open_incident_for_one_kind_and_object(
    catalog, organization, owner, with_node
):
    reservation = scheduled(organization, owner, catalog)
    node = catalog.east_a.nodes.first() if with_node else None
    Incident.objects.create(kind=K.STUCK, reservation=reservation, node=node, detail="one")
    Incident.objects.create(
        kind=K.STUCK, reservation=reservation, node=node, detail="two", resolved_at=timezone.now()
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Incident.objects.create(kind=K.STUCK, reservation=reservation, node=node, detail="three")


def test_a_node_failing_again_under_one_block_with_another_reason_is_not_a_new_incident(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    """The health sweep reports the node, and the block it strands (east-a has no spare for a
    4-node block), with the node's reason in the text: a second failure with another reason is
    the same trouble for the same objects."""
    reservation = scheduled(organization, owner, catalog, nodes=4)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)
    sick = Allocation.objects.filter(reservation=reservation).order_by("node__hostname")[0].node
    assert sick.cluster_id == catalog.east_a.pk
    for fault in ("GPU 3 fell off the bus", "PSU failed"):
        SimulatedNode.objects.update_or_create(hostname=sick.hostname, defaults={"fault": fault})
        Node.objects.filter(pk=sick.pk).update(status=Node.Status.AVAILABLE)  # back, then again
        assert provisioning.provisioning_reconcile()["unhealthy"] == 1
    assert _open() == [
        ("node_unhealthy", None, sick.pk, "GPU 3 fell off the bus"),
        (
            "node_unhealthy",
            reservation.pk,
            sick.pk,
            f"{sick.hostname} failed under {reservation.public_id}; no spare in east-a.",
        ),
    ]
    assert Reservation.objects.get(pk=reservation.pk).state == Reservation.State.ACTIVE


def test_sync_failures_with_other_reasons_are_one_incident(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    reservation = scheduled(organization, owner, catalog)
    with django_capture_on_commit_callbacks(execute=True):
        provisioning.reservation_start(reservation)
    provisioning.block_sync_failure_report(reservation.pk, "Slurm: invalid node name")
    provisioning.block_sync_failure_report(reservation.pk, "Slurm: requested nodes are busy")
    assert _open() == [
        (
            "sync_failed",
            reservation.pk,
            None,
            f"{reservation.public_id}: the backend did not take its new end or nodes: "
            "Slurm: invalid node name",
        )
    ]
