"""Operations in the back office: draining nodes, operating reservations, incidents, timelines."""

from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import User
from backoffice.roles import FINANCE, OPERATIONS, SALES
from billing.models import Refund
from billing.services import payments, settlement
from capacity import lifecycle, operations, services
from capacity.models import (
    Allocation,
    Cluster,
    Extension,
    Incident,
    Node,
    Region,
    Reservation,
    SimulatedCall,
)
from capacity.windows import Window
from core.dates import format_span
from core.errors import Conflict, NotAllowed, ServiceError
from core.models import AuditEvent
from tests.billing.conftest import card, localstripe_url, stripe_api  # noqa: F401
from tests.capacity.conftest import NEXT_HOUR, NOW, catalog, frozen_clock, hours  # noqa: F401
from tests.capacity.test_reservations import paid
from tests.capacity.test_reservations import paid as record_payment
from tests.factories import OrganizationFactory

from .conftest import GROUPS, make_staff, verified_client

S = Reservation.State
ACTION = "_selected_action"


# --- Small factories -----------------------------------------------------------------------------
def reserve(org, user, pool, *, nodes=2, start=NEXT_HOUR, length=24) -> Reservation:
    return services.reservation_create(
        organization=org,
        user=user,
        gpu_model=pool.h100,
        region=pool.east,
        node_count=nodes,
        window=Window(start, start + hours(length)),
    )


def scheduled(org, user, pool, **kwargs) -> Reservation:
    reservation = reserve(org, user, pool, **kwargs)
    return lifecycle.reservation_transition(reservation=reservation, to=S.SCHEDULED, actor=None)


def advance(reservation: Reservation, *states: str) -> Reservation:
    for state in states:
        reservation = lifecycle.reservation_transition(
            reservation=reservation, to=state, actor=None
        )
    return reservation


def running(org, user, pool, clock, **kwargs) -> Reservation:
    """Scheduled for 10:00, then the clock moves to 11:00 and the block is active."""
    reservation = scheduled(org, user, pool, **kwargs)
    clock.move_to(NEXT_HOUR + hours(1))
    return advance(reservation, S.PROVISIONING, S.ACTIVE)


def node(hostname: str) -> Node:
    return Node.objects.get(hostname=hostname)


def live_hosts(reservation: Reservation) -> list[str]:
    return sorted(
        Allocation.objects.filter(reservation=reservation, released_at__isnull=True).values_list(
            "node__hostname", flat=True
        )
    )


def snapshot() -> tuple:
    """Everything a refused operation must leave as it was."""
    return (
        list(Node.objects.order_by("pk").values_list("pk", "status", "status_reason")),
        list(
            Allocation.objects.order_by("pk").values_list(
                "pk", "reservation_id", "node_id", "starts_at", "ends_at", "released_at"
            )
        ),
        list(
            Reservation.objects.order_by("pk").values_list(
                "pk", "state", "ends_at", "total", "refund_due"
            )
        ),
        AuditEvent.objects.count(),
        Incident.objects.count(),
    )


def events(*actions: str) -> list[tuple]:
    return list(
        AuditEvent.objects.filter(action__in=actions)
        .order_by("id")
        .values_list("action", "actor_kind", "actor_email", "object_repr", "data", "reason")
    )


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


FIRST_DAY = "Tue 1 Dec 2026, 10:00 UTC – Wed 2 Dec 2026, 10:00 UTC"


def window(reservation: Reservation) -> str:
    return format_span(reservation.starts_at, reservation.ends_at)


# --- Draining a node ---------------------------------------------------------------------------
def test_draining_moves_each_reservation_to_a_spare_for_what_is_left(
    catalog, organization, owner, staff, frozen_clock
):
    ops = staff(OPERATIONS, email="ops-one@example.com")
    later = scheduled(organization, owner, catalog, nodes=1, start=NEXT_HOUR + hours(48))
    block = running(organization, owner, catalog, frozen_clock, nodes=2)
    assert (live_hosts(later), live_hosts(block)) == (["east-a-n00"], ["east-a-n00", "east-a-n01"])
    old = Allocation.objects.get(reservation=block, node__hostname="east-a-n00")

    result = operations.node_drain(node=node("east-a-n00"), actor=ops, reason="Firmware upgrade")

    assert result.swapped == [(block.public_id, "east-a-n02"), (later.public_id, "east-a-n01")]
    assert result.flagged == []
    drained = node("east-a-n00")
    assert (drained.status, drained.status_reason) == ("maintenance", "Firmware upgrade")
    assert (live_hosts(block), live_hosts(later)) == (["east-a-n01", "east-a-n02"], ["east-a-n01"])
    # The running block moves for the rest of its period; the old row ends now.
    old.refresh_from_db()
    new = Allocation.objects.get(reservation=block, node__hostname="east-a-n02")
    assert (old.released_at, new.starts_at, new.ends_at) == (
        NEXT_HOUR + hours(1),
        NEXT_HOUR + hours(1),
        NEXT_HOUR + hours(24),
    )
    moved_later = Allocation.objects.get(reservation=later, released_at__isnull=True)
    assert (moved_later.starts_at, moved_later.ends_at) == (
        NEXT_HOUR + hours(48),
        NEXT_HOUR + hours(72),
    )
    assert events("node.drained", "reservation.node_swapped") == [
        (
            "reservation.node_swapped",
            "staff",
            "ops-one@example.com",
            block.public_id,
            {"from": "east-a-n00", "to": "east-a-n02"},
            "Firmware upgrade",
        ),
        (
            "reservation.node_swapped",
            "staff",
            "ops-one@example.com",
            later.public_id,
            {"from": "east-a-n00", "to": "east-a-n01"},
            "Firmware upgrade",
        ),
        (
            "node.drained",
            "staff",
            "ops-one@example.com",
            "east-a-n00",
            {
                "swapped": {block.public_id: "east-a-n02", later.public_id: "east-a-n01"},
                "flagged": [],
            },
            "Firmware upgrade",
        ),
    ]
    assert Incident.objects.count() == 0


def test_a_drain_without_a_spare_is_refused_and_changes_nothing(
    catalog, organization, owner, staff
):
    full = scheduled(organization, owner, catalog, nodes=4)  # all of east-a
    before = snapshot()
    with pytest.raises(operations.DrainRefused) as refused:
        operations.node_drain(node=node("east-a-n00"), actor=staff(OPERATIONS), reason="Fans")
    assert refused.value.message == (
        f"east-a-n00 was not drained: no free node of its cluster can take {full.public_id} "
        f"({organization.name}, scheduled, {FIRST_DAY}). Nothing was changed."
    )
    assert snapshot() == before


def test_drain_anyway_leaves_the_reservation_on_the_node_and_opens_an_incident(
    catalog, organization, owner, staff
):
    ops = staff(OPERATIONS, email="ops-two@example.com")
    full = scheduled(organization, owner, catalog, nodes=4)
    result = operations.node_drain(
        node=node("east-a-n00"), actor=ops, reason="PSU failing", flag_unswappable=True
    )
    assert (result.swapped, result.flagged) == ([], [full.public_id])
    assert node("east-a-n00").status == "maintenance"
    assert live_hosts(full) == ["east-a-n00", "east-a-n01", "east-a-n02", "east-a-n03"]
    incident = Incident.objects.get()
    assert (incident.kind, incident.node, incident.reservation, incident.resolved_at) == (
        "node_unhealthy",
        node("east-a-n00"),
        full,
        None,
    )
    assert incident.detail == (
        f"east-a-n00 was drained into maintenance (PSU failing) while {full.public_id} "
        f"(scheduled, {FIRST_DAY}) holds it: no spare in east-a."
    )
    assert events("node.drained", "reservation.node_drained") == [
        (
            "reservation.node_drained",
            "staff",
            "ops-two@example.com",
            full.public_id,
            {"node": "east-a-n00", "spare": None},
            "PSU failing",
        ),
        (
            "node.drained",
            "staff",
            "ops-two@example.com",
            "east-a-n00",
            {"swapped": {}, "flagged": [full.public_id]},
            "PSU failing",
        ),
    ]


def test_nodes_drained_together_never_take_each_others_work(catalog, organization, owner, staff):
    block = scheduled(organization, owner, catalog, nodes=2)  # east-a n00, n01
    avoid = (node("east-a-n00").pk, node("east-a-n02").pk)
    result = operations.node_drain(
        node=node("east-a-n00"), actor=staff(OPERATIONS), reason="Rack move", avoid=avoid
    )
    assert result.swapped == [(block.public_id, "east-a-n03")]


def test_one_spare_serves_reservations_that_follow_each_other(catalog, organization, owner, staff):
    first = scheduled(organization, owner, catalog, nodes=1)  # n00, 10:00 for 24 h
    second = scheduled(organization, owner, catalog, nodes=1, start=NEXT_HOUR + hours(24))
    assert (live_hosts(first), live_hosts(second)) == (["east-a-n00"], ["east-a-n00"])
    result = operations.node_drain(node=node("east-a-n00"), actor=staff(OPERATIONS), reason="x")
    assert result.swapped == [(first.public_id, "east-a-n01"), (second.public_id, "east-a-n01")]


def test_a_batch_preview_proposes_what_its_drains_then_do(catalog, organization, owner, staff):
    ops = staff(OPERATIONS)
    first = scheduled(organization, owner, catalog, nodes=1)  # n00
    second = scheduled(organization, owner, catalog, nodes=1)  # n01, same period
    nodes = [node("east-a-n00"), node("east-a-n01")]
    avoid = tuple(n.pk for n in nodes)
    claimed: list = []
    proposed = [
        [(m.allocation.reservation.public_id, plan.spare_hostname(m)) for m in plan.moves]
        for plan in (
            operations.node_drain_plan(node=n, avoid=avoid, claimed=claimed) for n in nodes
        )
    ]
    assert proposed == [[(first.public_id, "east-a-n02")], [(second.public_id, "east-a-n03")]]
    done = [
        operations.node_drain(node=n, actor=ops, reason="Rack", avoid=avoid).swapped for n in nodes
    ]
    assert done == proposed


def test_a_reservation_never_moves_back_to_a_node_it_held_before(
    catalog, organization, owner, staff
):
    """A reservation holds a node at most once (one allocation row per pair, released or not),
    so a node it left and that came back is no spare for it."""
    ops = staff(OPERATIONS)
    block = scheduled(organization, owner, catalog, nodes=2)  # n00, n01
    operations.node_drain(node=node("east-a-n00"), actor=ops, reason="One")
    operations.node_restore(node=node("east-a-n00"), actor=ops)
    result = operations.node_drain(node=node("east-a-n02"), actor=ops, reason="Two")
    assert result.swapped == [(block.public_id, "east-a-n03")]
    assert live_hosts(block) == ["east-a-n01", "east-a-n03"]


def test_a_node_already_in_maintenance_is_not_drained_again(catalog, staff):
    Node.objects.filter(hostname="east-a-n00").update(status="maintenance", status_reason="Old")
    before = snapshot()
    with pytest.raises(Conflict) as conflict:
        operations.node_drain(node=node("east-a-n00"), actor=staff(OPERATIONS), reason="Again")
    assert conflict.value.message == "east-a-n00 is already maintenance."
    assert snapshot() == before


def test_a_drain_needs_a_reason(catalog, staff):
    before = snapshot()
    with pytest.raises(ServiceError) as error:
        operations.node_drain(node=node("east-a-n00"), actor=staff(OPERATIONS), reason="  ")
    assert (error.value.message, error.value.param) == (
        "Say why: the reason goes into the audit log.",
        "reason",
    )
    assert snapshot() == before


def test_restoring_brings_a_node_back_into_the_pool(catalog, staff):
    ops = staff(OPERATIONS, email="ops-three@example.com")
    operations.node_drain(node=node("east-a-n00"), actor=ops, reason="Cabling")
    operations.node_restore(node=node("east-a-n00"), actor=ops, reason="Cabling fixed")
    restored = node("east-a-n00")
    assert (restored.status, restored.status_reason) == ("available", "")
    assert events("node.restored") == [
        (
            "node.restored",
            "staff",
            "ops-three@example.com",
            "east-a-n00",
            {"maintenance_reason": "Cabling"},
            "Cabling fixed",
        )
    ]
    with pytest.raises(Conflict) as conflict:
        operations.node_restore(node=restored, actor=ops)
    assert conflict.value.message == "east-a-n00 is available, not in maintenance."


@pytest.mark.parametrize("group", [SALES, FINANCE, None])
def test_only_operations_may_drain_restore_and_operate(
    catalog, organization, owner, staff, group, frozen_clock
):
    actor = staff(group) if group else owner  # None: the customer who owns the reservation
    block = running(organization, owner, catalog, frozen_clock, nodes=1)
    Node.objects.filter(hostname="east-b-n00").update(status="maintenance")
    incident = Incident.objects.create(kind="stuck", reservation=block, detail="Stuck")
    before = snapshot()
    calls = [
        lambda: operations.node_drain(node=node("east-a-n03"), actor=actor, reason="r"),
        lambda: operations.node_restore(node=node("east-b-n00"), actor=actor),
        lambda: operations.reservation_cancel(
            reservation=block, actor=actor, reason="r", refund="full"
        ),
        lambda: operations.reservation_extend(reservation=block, actor=actor, hours=1, reason="r"),
        lambda: operations.reservation_retry(reservation=block, actor=actor),
        lambda: operations.reservation_release(reservation=block, actor=actor, reason="r"),
        lambda: operations.incident_resolve(incident=incident, actor=actor),
    ]
    for call in calls:
        with pytest.raises(NotAllowed):
            call()
    assert snapshot() == before
    incident.refresh_from_db()
    assert incident.resolved_at is None


# --- Reservations ------------------------------------------------------------------------------
@pytest.fixture
def settlements(monkeypatch) -> list[tuple[str, dict]]:
    """The settlement requests the lifecycle sends billing (through its hook) after commit."""
    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        settlement,
        "enqueue_after_commit",
        lambda name, **kwargs: sent.append((name, kwargs)),
    )
    return sent


def operations_with_refunds(email: str = "") -> User:
    """Operations staff who also hold finance's refund permission."""
    user = make_staff(OPERATIONS, email=email)
    user.groups.add(*make_staff(FINANCE).groups.all())
    return user


@pytest.mark.parametrize(
    ("refund", "due", "percent", "actor"),
    [
        ("policy", Decimal("384.00"), 50, OPERATIONS),
        ("full", Decimal("768.00"), 100, "operations and finance"),
    ],
)
def test_cancelling_a_scheduled_reservation_refunds_what_staff_chose(
    catalog, organization, owner, staff, settlements, refund, due, percent, actor
):
    email = "ops-four@example.com"
    ops = staff(OPERATIONS, email=email) if actor == OPERATIONS else operations_with_refunds(email)
    reservation = scheduled(organization, owner, catalog)  # $768, starts in half an hour
    paid(reservation)
    canceled = operations.reservation_cancel(
        reservation=reservation, actor=ops, reason="Customer called: wrong region", refund=refund
    )
    assert (canceled.state, canceled.refund_due) == ("canceled", due)
    assert live_hosts(reservation) == []
    assert settlements == [("billing.settle_reservation", {"reservation_id": reservation.pk})]
    [event] = events("reservation.transition")[-1:]
    assert event == (
        "reservation.transition",
        "staff",
        "ops-four@example.com",
        reservation.public_id,
        {
            "from": "scheduled",
            "to": "canceled",
            "refund_due": str(due),
            "refund_percent": percent,
            "refund_basis": refund,
        },
        "Customer called: wrong region",
    )


def test_operations_alone_cannot_refund_above_the_policy(
    catalog, organization, owner, staff, settlements
):
    reservation = scheduled(organization, owner, catalog)  # starts in half an hour: 50 %
    paid(reservation, amount_refunded=Decimal("68.00"))  # what is left of it: 700.00
    before = snapshot()
    with pytest.raises(NotAllowed) as refused:
        operations.reservation_cancel(
            reservation=reservation, actor=staff(OPERATIONS), reason="Outage", refund="full"
        )
    assert refused.value.message == (
        "You are not allowed to refund more than the cancellation policy gives back "
        "($350.00 of $700.00)."
    )
    assert snapshot() == before
    assert settlements == []


def test_operations_may_give_a_full_refund_when_the_policy_gives_it_all(
    catalog, organization, owner, staff, settlements
):
    reservation = scheduled(organization, owner, catalog, start=NEXT_HOUR + hours(24 * 8))
    paid(reservation)
    canceled = operations.reservation_cancel(
        reservation=reservation, actor=staff(OPERATIONS), reason="Asked", refund="full"
    )
    assert canceled.refund_due == Decimal("768.00")


def test_cancelling_a_hold_refunds_nothing(catalog, organization, owner, staff, settlements):
    held = reserve(organization, owner, catalog)
    canceled = operations.reservation_cancel(
        reservation=held, actor=staff(OPERATIONS), reason="Duplicate", refund="full"
    )
    assert (canceled.state, canceled.refund_due) == ("canceled", None)
    # Settlement still runs: nothing to refund, but any payment left open for the hold is
    # canceled at Stripe.
    assert settlements == [("billing.settle_reservation", {"reservation_id": held.pk})]


def test_cancelling_during_provisioning_tears_the_nodes_down(
    catalog, organization, owner, staff, settlements, django_capture_on_commit_callbacks
):
    reservation = advance(scheduled(organization, owner, catalog), S.PROVISIONING)
    paid(reservation)
    with django_capture_on_commit_callbacks(execute=True):
        canceled = operations.reservation_cancel(
            reservation=reservation,
            actor=operations_with_refunds(),
            reason="Bad image",
            refund="full",
        )
    assert (canceled.state, canceled.refund_due) == ("canceled", Decimal("768.00"))
    assert live_hosts(reservation) == []
    assert SimulatedCall.objects.filter(key=f"deprovision:{reservation.public_id}").count() == 1


def test_an_active_reservation_cannot_be_canceled_only_released(
    catalog, organization, owner, staff, frozen_clock
):
    block = running(organization, owner, catalog, frozen_clock)
    before = snapshot()
    with pytest.raises(Conflict) as conflict:
        operations.reservation_cancel(
            reservation=block, actor=staff(OPERATIONS), reason="r", refund="policy"
        )
    assert conflict.value.message == (
        f"{block.public_id} is active and cannot be canceled. Release it instead."
    )
    assert snapshot() == before


@pytest.mark.parametrize(
    ("reason", "refund", "message"),
    [
        ("", "policy", "Say why: the reason goes into the audit log."),
        ("ok", "half", "Choose the policy refund or a full refund."),
    ],
)
def test_a_cancellation_needs_a_reason_and_a_known_refund(
    catalog, organization, owner, staff, reason, refund, message
):
    reservation = scheduled(organization, owner, catalog)
    before = snapshot()
    with pytest.raises(ServiceError) as error:
        operations.reservation_cancel(
            reservation=reservation, actor=staff(OPERATIONS), reason=reason, refund=refund
        )
    assert error.value.message == message
    assert snapshot() == before


def test_extending_keeps_the_nodes_and_prices_the_extra_hours(
    catalog, organization, owner, staff, frozen_clock
):
    ops = staff(OPERATIONS, email="ops-five@example.com")
    block = running(organization, owner, catalog, frozen_clock)
    extended = operations.reservation_extend(
        reservation=block, actor=ops, hours=6, reason="Compensation for the outage"
    )
    # Complimentary: the end moves, the price (what was paid) does not.
    assert (extended.ends_at, extended.total) == (NEXT_HOUR + hours(30), Decimal("768.00"))
    extension = Extension.objects.get()
    assert (extension.state, extension.price, extension.reason) == (
        "complimentary", Decimal("192.00"), "Compensation for the outage",
    )  # fmt: skip
    assert live_hosts(block) == ["east-a-n00", "east-a-n01"]
    assert set(
        Allocation.objects.filter(reservation=block, released_at__isnull=True).values_list(
            "ends_at", flat=True
        )
    ) == {NEXT_HOUR + hours(30)}
    assert events("reservation.extended", "reservation.extended_by_staff") == [
        (
            "reservation.extended",
            "staff",
            "ops-five@example.com",
            block.public_id,
            {
                "extension": extension.public_id,
                "hours": 6,
                "from": "2026-12-02T10:00:00+00:00",
                "to": "2026-12-02T16:00:00+00:00",
                "amount": "0.00",
                "currency": "usd",
                "complimentary": True,
            },
            "",
        ),
        (
            "reservation.extended_by_staff",
            "staff",
            "ops-five@example.com",
            block.public_id,
            {
                "hours": 6,
                "extension": extension.public_id,
                "complimentary": True,
                "value": "192.00",
                "currency": "usd",
            },
            "Compensation for the outage",
        ),
    ]


def test_an_extension_into_a_booked_node_is_refused(catalog, organization, owner, staff):
    block = scheduled(organization, owner, catalog, nodes=4)  # all of east-a
    after = scheduled(organization, owner, catalog, nodes=4, start=NEXT_HOUR + hours(24))
    assert live_hosts(after) == live_hosts(block)
    before = snapshot()
    with pytest.raises(Conflict) as conflict:
        operations.reservation_extend(
            reservation=block, actor=staff(OPERATIONS), hours=2, reason="Asked by phone"
        )
    assert conflict.value.message == (
        f"{block.public_id} cannot be extended by 2 h: another reservation holds some of its "
        "nodes in Wed 2 Dec 2026, 10:00 UTC – Wed 2 Dec 2026, 12:00 UTC."
    )
    assert snapshot() == before


def test_retrying_a_stuck_provisioning_enqueues_it_again(
    catalog, organization, owner, staff, django_capture_on_commit_callbacks
):
    reservation = advance(scheduled(organization, owner, catalog), S.PROVISIONING)
    with django_capture_on_commit_callbacks(execute=True):
        task = operations.reservation_retry(reservation=reservation, actor=staff(OPERATIONS))
    assert task == "capacity.provision"
    reservation.refresh_from_db()
    assert reservation.state == "active"  # the task ran (eagerly, in tests)
    assert [e[4] for e in events("reservation.retried")] == [
        {"state": "provisioning", "task": "capacity.provision"}
    ]


def test_only_stuck_reservations_are_retried(catalog, organization, owner, staff):
    reservation = scheduled(organization, owner, catalog)
    before = snapshot()
    with pytest.raises(Conflict) as conflict:
        operations.reservation_retry(reservation=reservation, actor=staff(OPERATIONS))
    assert conflict.value.message == (
        f"{reservation.public_id} is scheduled: only reservations stuck in provisioning or "
        "releasing can be retried."
    )
    assert snapshot() == before


def test_force_release_ends_an_active_block_now(
    catalog, organization, owner, staff, frozen_clock, django_capture_on_commit_callbacks
):
    ops = staff(OPERATIONS, email="ops-six@example.com")
    block = running(organization, owner, catalog, frozen_clock)
    with django_capture_on_commit_callbacks(execute=True):
        operations.reservation_release(reservation=block, actor=ops, reason="Abuse report")
    block.refresh_from_db()
    assert block.state == "completed"
    assert live_hosts(block) == []
    transitions = [
        (e[1], e[4]["from"], e[4]["to"], e[5])
        for e in events("reservation.transition")
        if e[3] == block.public_id
    ]
    assert transitions[-2:] == [
        ("staff", "active", "releasing", "Abuse report"),
        ("system", "releasing", "completed", "Released."),
    ]
    with pytest.raises(Conflict) as conflict:
        operations.reservation_release(reservation=block, actor=ops, reason="Again")
    assert conflict.value.message == (
        f"{block.public_id} is completed: only active reservations can be released."
    )


def test_resolving_an_incident(catalog, organization, owner, staff):
    ops = staff(OPERATIONS, email="ops-seven@example.com")
    reservation = scheduled(organization, owner, catalog)
    incident = Incident.objects.create(kind="stuck", reservation=reservation, detail="Stuck")
    operations.incident_resolve(incident=incident, actor=ops, note="Driver restarted")
    incident.refresh_from_db()
    assert incident.resolved_at == NOW
    assert events("incident.resolved") == [
        (
            "incident.resolved",
            "staff",
            "ops-seven@example.com",
            str(incident),
            {"kind": "stuck"},
            "Driver restarted",
        )
    ]
    with pytest.raises(Conflict):
        operations.incident_resolve(incident=incident, actor=ops)


# --- The admin: who sees which action -----------------------------------------------------------
RESERVATIONS = "/admin/capacity/reservation/"
NODES = "/admin/capacity/node/"
INCIDENTS = "/admin/capacity/incident/"


def action_names(response) -> list[str]:
    form = response.context["action_form"]  # None: no action at all
    return [name for name, _ in form.fields["action"].choices if name] if form else []


@pytest.mark.parametrize("group", GROUPS)
def test_only_operations_sees_the_reservation_actions(catalog, staff_client, group):
    response = staff_client(group).get(RESERVATIONS)
    assert response.status_code == 200
    expected = ["cancel_with_refund", "extend", "retry", "force_release"]
    assert action_names(response) == (expected if group == OPERATIONS else [])


@pytest.mark.parametrize("group", GROUPS)
def test_only_operations_opens_nodes_incidents_and_the_timeline(catalog, staff_client, group):
    client = staff_client(group)
    timeline = reverse("admin:capacity_cluster_timeline", args=[catalog.east_a.pk])
    statuses = [client.get(url).status_code for url in (NODES, INCIDENTS, timeline)]
    assert statuses == ([200, 200, 200] if group == OPERATIONS else [403, 403, 403])
    if group == OPERATIONS:
        assert action_names(client.get(NODES)) == ["drain", "restore"]
        assert action_names(client.get(INCIDENTS)) == ["resolve"]


@pytest.mark.parametrize("group", [SALES, FINANCE])
def test_posting_an_operation_without_the_permission_changes_nothing(
    catalog, organization, owner, staff_client, group
):
    reservation = scheduled(organization, owner, catalog)
    client = staff_client(group)
    before = snapshot()
    for action, extra in (
        ("cancel_with_refund", {"refund": "full", "reason": "r"}),
        ("extend", {"hours": "2", "reason": "r", "mode": "complimentary"}),
        ("retry", {}),
        ("force_release", {"reason": "r"}),
    ):
        response = client.post(
            RESERVATIONS, {"action": action, ACTION: [reservation.pk], "apply": "yes", **extra}
        )
        # With no action to offer, the change list ignores the post and shows itself.
        assert (response.status_code, texts(response)) == (200, [])
    drain = client.post(
        NODES, {"action": "drain", ACTION: [node("east-a-n00").pk], "apply": "yes", "reason": "r"}
    )
    assert drain.status_code == 403
    assert snapshot() == before


# --- The admin: draining -------------------------------------------------------------------------
def test_the_drain_page_shows_each_nodes_reservations_and_their_spares(
    catalog, organization, owner, staff_client
):
    fits = scheduled(organization, owner, catalog, nodes=2)  # east-a n00, n01
    scheduled(organization, owner, catalog, nodes=8)  # all of east-b
    client = staff_client(OPERATIONS)
    before = snapshot()
    ids = [node("east-a-n00").pk, node("east-b-n00").pk, node("east-a-n01").pk]
    response = client.post(NODES, {"action": "drain", ACTION: ids})
    assert response.status_code == 200
    sections = response.context["sections"]
    assert [s.title for s in sections] == [
        "east-a-n00 (east-a)",
        "east-a-n01 (east-a)",
        "east-b-n00 (east-b)",
    ]
    assert [[(str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in s.rows] for s in sections] == [
        [
            (
                organization.name,
                "Scheduled",
                "Tue 1 Dec 2026, 10:00 UTC – Wed 2 Dec 2026, 10:00 UTC",
                "east-a-n02",
            )
        ],
        [
            (
                organization.name,
                "Scheduled",
                "Tue 1 Dec 2026, 10:00 UTC – Wed 2 Dec 2026, 10:00 UTC",
                "east-a-n03",
            )
        ],
        [
            (
                organization.name,
                "Scheduled",
                "Tue 1 Dec 2026, 10:00 UTC – Wed 2 Dec 2026, 10:00 UTC",
                '<strong class="no-spare">no spare</strong>',
            )
        ],
    ]
    assert [s.problem for s in sections] == [
        "",
        "",
        "1 reservation has no spare: the drain is refused unless you choose “Drain anyway”.",
    ]
    assert fits.public_id in response.content.decode()
    assert snapshot() == before  # the page only shows


def test_draining_from_the_admin_reports_each_node_that_failed(
    catalog, organization, owner, staff_client
):
    fits = scheduled(organization, owner, catalog, nodes=2)  # east-a n00, n01
    stuck = scheduled(organization, owner, catalog, nodes=8)  # all of east-b
    client = staff_client(OPERATIONS)
    ids = [node("east-a-n00").pk, node("east-b-n00").pk]
    response = client.post(
        NODES, {"action": "drain", ACTION: ids, "apply": "yes", "reason": "Kernel update"}
    )
    assert response.status_code == 302
    assert texts(response) == [
        "Node east-b-n00 was not drained: no free node of its cluster can take "
        f"{stuck.public_id} ({organization.name}, scheduled, {window(stuck)}). "
        "Nothing was changed.",
        f"Drained: east-a-n00 is in maintenance, moved {fits.public_id} to east-a-n02.",
    ]
    assert [node("east-a-n00").status, node("east-b-n00").status] == ["maintenance", "available"]
    drained = AuditEvent.objects.get(action="node.drained")
    assert (drained.actor_kind, drained.reason, drained.ip_address) == (
        "staff",
        "Kernel update",
        "127.0.0.1",
    )
    assert live_hosts(stuck) == [f"east-b-n{i:02d}" for i in range(8)]


def test_the_drain_page_insists_on_a_reason(catalog, staff_client):
    client = staff_client(OPERATIONS)
    before = snapshot()
    response = client.post(
        NODES, {"action": "drain", ACTION: [node("east-a-n00").pk], "apply": "yes", "reason": ""}
    )
    assert response.status_code == 200
    assert response.context["form"].errors == {
        "reason": ["Say why: the reason goes into the audit log."]
    }
    assert snapshot() == before


def test_drain_anyway_from_the_admin_flags_the_reservation(
    catalog, organization, owner, staff_client
):
    stuck = scheduled(organization, owner, catalog, nodes=4)  # all of east-a
    response = staff_client(OPERATIONS).post(
        NODES,
        {
            "action": "drain",
            ACTION: [node("east-a-n00").pk],
            "apply": "yes",
            "reason": "Smoke",
            "flag_unswappable": "on",
        },
    )
    assert texts(response) == [
        f"Drained: east-a-n00 is in maintenance, flagged {stuck.public_id} (no spare)."
    ]
    assert Incident.objects.get().reservation == stuck


def test_restoring_from_the_admin(catalog, staff_client):
    Node.objects.filter(hostname="east-a-n00").update(status="maintenance", status_reason="x")
    client = staff_client(OPERATIONS)
    ids = [node("east-a-n00").pk, node("east-a-n01").pk]
    response = client.post(NODES, {"action": "restore", "index": "0", ACTION: ids})
    assert texts(response) == [
        "Node east-a-n01 is available, not in maintenance.",
        "Available again: east-a-n00.",
    ]
    assert node("east-a-n00").status == "available"


def test_node_status_is_not_edited_in_the_form(catalog, staff_client):
    target = node("east-a-n00")
    url = reverse("admin:capacity_node_change", args=[target.pk])
    response = staff_client(OPERATIONS).post(
        url,
        {
            "hostname": "east-a-n00",
            "cluster": catalog.east_a.pk,
            "gpu_count": "8",
            "status": "maintenance",
            "status_reason": "sneaky",
        },
    )
    assert response.status_code == 302
    target.refresh_from_db()
    assert (target.status, target.status_reason) == ("available", "")


# --- The admin: reservations ---------------------------------------------------------------------
def test_cancel_from_the_admin_confirms_then_reports_each_row(
    catalog, organization, owner, staff_client, frozen_clock, settlements
):
    paid = scheduled(organization, owner, catalog, nodes=1, start=NEXT_HOUR + hours(24 * 8))
    record_payment(paid)
    block = running(organization, owner, catalog, frozen_clock, nodes=1)
    client = staff_client(OPERATIONS)
    before = snapshot()
    page = client.post(RESERVATIONS, {"action": "cancel_with_refund", ACTION: [paid.pk, block.pk]})
    assert page.status_code == 200
    [section] = page.context["sections"]
    assert [[str(c) for c in row[4:]] for row in section.rows] == [
        ["—", "—", "cannot be canceled: release it instead"],
        ["384.00 (100 %)", "384.00", ""],
    ]
    assert snapshot() == before
    response = client.post(
        RESERVATIONS,
        {
            "action": "cancel_with_refund",
            ACTION: [paid.pk, block.pk],
            "apply": "yes",
            "refund": "policy",
            "reason": "Customer asked",
        },
    )
    assert texts(response) == [
        f"Reservation {block.public_id} is active and cannot be canceled. Release it instead.",
        f"Canceled: {paid.public_id} (refund due 384.00 USD).",
    ]
    paid.refresh_from_db()
    assert (paid.state, paid.refund_due) == ("canceled", Decimal("384.00"))
    assert settlements == [("billing.settle_reservation", {"reservation_id": paid.pk})]


def test_a_full_refund_above_the_policy_from_the_admin_is_finances(
    catalog, organization, owner, staff_client, settlements
):
    soon = scheduled(organization, owner, catalog, nodes=1)  # in half an hour: 50 %
    record_payment(soon)
    later = scheduled(organization, owner, catalog, nodes=1, start=NEXT_HOUR + hours(24 * 8))
    record_payment(later)
    client = staff_client(OPERATIONS)
    page = client.post(RESERVATIONS, {"action": "cancel_with_refund", ACTION: [soon.pk, later.pk]})
    [section] = page.context["sections"]
    assert [[str(c) for c in row[4:]] for row in section.rows] == [
        ["192.00 (50 %)", "384.00", "above the policy: needs finance"],
        ["384.00 (100 %)", "384.00", ""],
    ]
    before = snapshot()
    post = {"action": "cancel_with_refund", ACTION: [soon.pk, later.pk], "apply": "yes"}
    refused = client.post(RESERVATIONS, {**post, "refund": "full", "reason": "Outage"})
    assert refused.status_code == 200
    assert refused.context["form"].errors["refund"] == [
        f"A full refund gives back more than the cancellation policy for {soon.public_id}: that "
        "needs finance's refund permission. Choose the policy refund, or ask finance."
    ]
    assert (texts(refused), snapshot(), settlements) == ([], before, [])
    # Finance's refund permission as well: the same request goes through.
    finance = verified_client(operations_with_refunds())
    page = finance.post(RESERVATIONS, {"action": "cancel_with_refund", ACTION: [soon.pk]})
    assert [str(c) for c in page.context["sections"][0].rows[0][4:]] == [
        "192.00 (50 %)", "384.00", "",
    ]  # fmt: skip
    done = finance.post(RESERVATIONS, {**post, "refund": "full", "reason": "Outage"})
    assert texts(done) == [
        f"Canceled: {soon.public_id} (refund due 384.00 USD); "
        f"{later.public_id} (refund due 384.00 USD)."
    ]


def test_extend_from_the_admin_validates_the_hours(
    catalog, organization, owner, staff_client, frozen_clock
):
    block = running(organization, owner, catalog, frozen_clock)
    client = staff_client(OPERATIONS)
    before = snapshot()
    response = client.post(
        RESERVATIONS,
        {
            "action": "extend",
            ACTION: [block.pk],
            "apply": "yes",
            "hours": "0",
            "reason": "x",
            "mode": "complimentary",
        },
    )
    assert response.context["form"].errors == {
        "hours": ["Ensure this value is greater than or equal to 1."]
    }
    assert snapshot() == before
    response = client.post(
        RESERVATIONS,
        {
            "action": "extend",
            ACTION: [block.pk],
            "apply": "yes",
            "hours": "3",
            "reason": "Asked",
            "mode": "complimentary",
        },
    )
    assert texts(response) == [
        f"Complimentary extension by 3 h: {block.public_id} to Wed 2 Dec 2026, 13:00 UTC."
    ]


def test_force_release_from_the_admin(
    catalog, organization, owner, staff_client, frozen_clock, django_capture_on_commit_callbacks
):
    block = running(organization, owner, catalog, frozen_clock)
    held = reserve(organization, owner, catalog, nodes=1, start=NEXT_HOUR + hours(48))
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client(OPERATIONS).post(
            RESERVATIONS,
            {
                "action": "force_release",
                ACTION: [block.pk, held.pk],
                "apply": "yes",
                "reason": "Abuse",
            },
        )
    assert texts(response) == [
        f"Reservation {held.public_id} is held: only active reservations can be released.",
        f"Releasing: {block.public_id}.",
    ]
    block.refresh_from_db()
    assert block.state == "completed"


def test_the_reservation_page_shows_its_timeline_without_a_query_per_event(
    catalog, organization, owner, staff, frozen_clock
):
    ops = staff(OPERATIONS, email="ops-eight@example.com")
    block = running(organization, owner, catalog, frozen_clock)
    client = verified_client(ops)  # after the clock moved: an hour idle would sign it out
    url = reverse("admin:capacity_reservation_change", args=[block.pk])

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    queries()  # the session's first request saves it
    few = queries()
    for _ in range(4):
        operations.reservation_extend(reservation=block, actor=ops, hours=1, reason="More time")
    assert queries() == few
    response = client.get(url)
    rows = [(e.what, e.who, e.why) for e in response.context["timeline"]]
    assert rows[:4] == [
        ("Created: held, 768.00 USD", f"Customer · {owner.email}", ""),
        ("held → scheduled", "System", ""),
        ("scheduled → provisioning", "System", ""),
        ("provisioning → active", "System", ""),
    ]
    assert rows[4:6] == [
        (
            "Extended by 1 h to 2026-12-02 11:00 (complimentary)",
            "Staff · ops-eight@example.com",
            "",
        ),
        (
            "Complimentary extension by 1 h granted by staff (worth 32.00 USD)",
            "Staff · ops-eight@example.com",
            "More time",
        ),
    ]
    assert len(rows) == 12
    assert [name for name, _ in response.context["operations"]] == ["extend", "force_release"]


def test_searching_reservations_by_public_id_and_filtering_by_organization(
    catalog, organization, owner, staff_client
):
    mine = scheduled(organization, owner, catalog, nodes=1)
    other = OrganizationFactory(name="Zeta Compute", slug="zeta")
    theirs = Reservation.objects.create(
        **{
            f.name: getattr(mine, f.name)
            for f in Reservation._meta.fields
            if f.name not in ("id", "public_id", "organization", "request_token")
        },
        organization=other,
    )
    client = staff_client(OPERATIONS)

    def found(query: str) -> list[str]:
        response = client.get(RESERVATIONS + query)
        return sorted(r.public_id for r in response.context["cl"].result_list)

    assert found(f"?q={mine.public_id}") == [mine.public_id]
    assert found(f"?q={mine.public_id[:8].upper()}") == sorted(
        r.public_id for r in (mine, theirs) if r.public_id.startswith(mine.public_id[:8])
    )
    assert found("?org=zeta") == [theirs.public_id]
    assert found("?org=Zeta+Compute") == [theirs.public_id]
    assert found(f"?org={organization.slug}&state=scheduled") == [mine.public_id]
    assert found("?when=today") == sorted([mine.public_id, theirs.public_id])
    assert found("?when=past") == []


# --- The admin: incidents -------------------------------------------------------------------------
def test_resolving_incidents_from_the_admin(catalog, staff_client):
    first = Incident.objects.create(kind="stuck", detail="One")
    done = Incident.objects.create(kind="stuck", detail="Two", resolved_at=NOW)
    response = staff_client(OPERATIONS).post(
        INCIDENTS, {"action": "resolve", "index": "0", ACTION: [first.pk, done.pk]}
    )
    assert texts(response) == [
        f"Incident {done.pk} was already resolved on Tue 1 Dec 2026, 09:30 UTC.",
        f"Resolved: {first.pk}.",
    ]


# --- The admin: change lists stay flat as rows grow ---------------------------------------------
def many(count: int, catalog) -> None:
    """`count` rows of every operations model, related rows included."""
    region = Region.objects.create(code=f"r{count}", name=f"Region {count}")
    for i in range(count):
        Cluster.objects.create(code=f"c{count}-{i}", region=region, gpu_model=catalog.h100)
    Node.objects.bulk_create(
        Node(cluster=catalog.east_b, hostname=f"bulk{count}-{i}") for i in range(count)
    )
    org = OrganizationFactory()
    template = {
        "gpu_model": catalog.h100,
        "region": catalog.east,
        "cluster": catalog.east_b,
        "node_count": 1,
        "starts_at": NEXT_HOUR,
        "ends_at": NEXT_HOUR + hours(1),
        "state": "scheduled",
        "currency": "usd",
        "price_per_gpu_hour": Decimal("2"),
        "price_source": "list",
        "subtotal": Decimal("16"),
        "discount": Decimal("0"),
        "total": Decimal("16"),
    }
    reservations = Reservation.objects.bulk_create(
        Reservation(organization=org, public_id=f"rsv_bulk{count}x{i:05d}", **template)
        for i in range(count)
    )
    nodes = list(Node.objects.filter(hostname__startswith=f"bulk{count}-").order_by("pk"))
    Allocation.objects.bulk_create(
        Allocation(
            reservation=r,
            node=n,
            cluster=catalog.east_b,
            starts_at=NEXT_HOUR,
            ends_at=NEXT_HOUR + hours(1),
        )
        for r, n in zip(reservations, nodes, strict=True)
    )
    Incident.objects.bulk_create(
        Incident(kind="stuck", reservation=r, node=n, detail="x")
        for r, n in zip(reservations, nodes, strict=True)
    )
    Region.objects.bulk_create(Region(code=f"x{count}-{i}", name="x") for i in range(count))


CHANGE_LISTS = [
    "/admin/capacity/reservation/",
    "/admin/capacity/reservation/?state=scheduled&when=today&org=nobody",
    "/admin/capacity/reservation/?_facets=True&q=rsv_bulk",
    "/admin/capacity/node/?_facets=True&status=available",
    "/admin/capacity/node/",
    "/admin/capacity/cluster/",
    "/admin/capacity/region/",
    "/admin/capacity/incident/?open=yes",
    "/admin/capacity/allocation/",
]


def test_change_lists_make_as_many_queries_for_5_rows_as_for_60(catalog):
    client = verified_client(make_staff(OPERATIONS))

    def counts() -> list[int]:
        result = []
        for url in CHANGE_LISTS:
            with CaptureQueriesContext(connection) as captured:
                assert client.get(url).status_code == 200, url
            result.append(len(captured))
        return result

    many(5, catalog)
    few = counts()
    many(55, catalog)
    assert counts() == few


# --- End to end: a staff cancellation refunds the card through Stripe ---------------------------
def test_a_full_refund_by_staff_reaches_stripe(
    catalog,
    organization,
    owner,
    staff,
    localstripe_url,
    stripe_api,
    django_capture_on_commit_callbacks,
):
    held = reserve(organization, owner, catalog)  # $768, starts in half an hour
    with django_capture_on_commit_callbacks(execute=True):
        payments.payment_by_card_create(
            reservation=held, actor=owner, payment_method_id=card(stripe_api), attempt_token="a1"
        )
    held.refresh_from_db()
    assert held.state == "scheduled"
    with django_capture_on_commit_callbacks(execute=True):
        operations.reservation_cancel(
            reservation=held,
            actor=operations_with_refunds(),
            reason="Outage on our side",
            refund="full",
        )
    refund = Refund.objects.get()
    assert (refund.amount, refund.currency, refund.status) == (
        Decimal("768.00"),
        "usd",
        "succeeded",
    )


def test_the_node_list_counts_what_each_node_holds_now_or_later(
    catalog, organization, owner, staff_client
):
    scheduled(organization, owner, catalog, nodes=2)  # east-a n00, n01
    scheduled(organization, owner, catalog, nodes=1, start=NEXT_HOUR + hours(48))  # n00 again
    canceled = scheduled(organization, owner, catalog, nodes=1, start=NEXT_HOUR + hours(96))
    advance(canceled, S.CANCELED)  # gave its node back
    response = staff_client(OPERATIONS).get(NODES, {"q": "east-a"})
    rows = [(n.hostname, n.commitments_n) for n in response.context["cl"].result_list]
    assert rows == [("east-a-n00", 2), ("east-a-n01", 1), ("east-a-n02", 0), ("east-a-n03", 0)]
