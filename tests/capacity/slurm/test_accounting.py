"""With Slurm accounting (slurmdbd on a throwaway MariaDB, associations enforced), each
organization's account is made with sacctmgr before its first reservation."""

import pytest

from capacity.drivers import get_driver
from capacity.models import Incident, Reservation
from tests.factories import OrganizationFactory

from .conftest import block, start, state

S = Reservation.State
pytestmark = pytest.mark.django_db


def accounts(cluster) -> list[str]:  # type: ignore[no-untyped-def]
    out = cluster.run("sacctmgr", "-n", "-P", "show", "account", "format=account").stdout
    return sorted(out.split())


def test_the_account_is_made_once_and_the_reservation_is_for_it(
    slurm_accounting, slurm_org, inventory, django_capture_on_commit_callbacks
):
    assert "acme-labs" not in accounts(slurm_accounting)
    cluster = inventory(["acc001"])
    reservation = block(slurm_org, cluster, ["acc001"])
    start(reservation, django_capture_on_commit_callbacks)
    assert state(reservation) == S.ACTIVE
    assert "acme-labs" in accounts(slurm_accounting)
    view = slurm_accounting.reservation(reservation.public_id)
    assert (view["Nodes"], view["Accounts"]) == ("acc001", "acme-labs")
    associations = slurm_accounting.run(
        "sacctmgr", "-n", "-P", "show", "association", "account=acme-labs", "format=account"
    ).stdout

    # Twice: the account exists, the reservation matches; nothing new anywhere.
    line = slurm_accounting.scontrol("-o", "show", "res", reservation.public_id).stdout
    get_driver().provision(
        key=f"provision:{reservation.public_id}",
        account=slurm_org.slug,
        nodes=["acc001"],
        starts_at=reservation.starts_at,
        ends_at=reservation.ends_at,
    )
    assert slurm_accounting.scontrol("-o", "show", "res", reservation.public_id).stdout == line
    assert (
        slurm_accounting.run(
            "sacctmgr", "-n", "-P", "show", "association", "account=acme-labs", "format=account"
        ).stdout
        == associations
    )


def test_an_account_unknown_to_slurm_is_refused_as_permanent(
    slurm_accounting, inventory, settings, django_capture_on_commit_callbacks
):
    settings.SLURM_ACCOUNTING = False  # as if accounting were not configured on our side
    ghost = OrganizationFactory(name="Ghost Co", slug="ghost-co")
    cluster = inventory(["acc002"])
    reservation = block(ghost, cluster, ["acc002"])
    start(reservation, django_capture_on_commit_callbacks)
    assert state(reservation) == S.FAILED
    assert Incident.objects.get(reservation=reservation).detail == (
        "Slurm (scontrol): Error creating the reservation: "
        "Invalid account or account/partition combination specified"
    )
    assert "ghost-co" not in accounts(slurm_accounting)
