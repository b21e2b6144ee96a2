"""With Slurm accounting (slurmdbd on a throwaway MariaDB, associations enforced), each
organization's account is made with sacctmgr before its first reservation."""

import pytest

from capacity import tasks
from capacity.drivers import get_driver
from capacity.models import Incident, Reservation
from tests.capacity.test_provisioning import Broker
from tests.factories import OrganizationFactory

from .conftest import block, start, state

S = Reservation.State
pytestmark = pytest.mark.django_db


def accounts(cluster) -> list[str]:
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


def test_an_account_unknown_to_slurm_is_our_configuration_retried_with_an_incident(
    slurm_accounting, inventory, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.SLURM_ACCOUNTING = False  # as if accounting were not configured on our side
    ghost = OrganizationFactory(name="Ghost Co", slug="ghost-co")
    cluster = inventory(["acc002"])
    reservation = block(ghost, cluster, ["acc002"])
    broker = Broker(tasks.provision, monkeypatch)
    start(reservation, django_capture_on_commit_callbacks)
    assert state(reservation) == S.PROVISIONING  # not failed and refunded
    assert broker.countdowns == [5]
    assert Incident.objects.get(reservation=reservation).detail == (
        f"{reservation.public_id}: provisioning is being retried: "
        "Slurm (scontrol): Error creating the reservation: "
        "Invalid account or account/partition combination specified"
    )
    assert "ghost-co" not in accounts(slurm_accounting)


def test_the_login_user_may_submit_under_the_account_and_not_under_another(
    slurm_accounting, slurm_org, inventory, settings, django_capture_on_commit_callbacks
):
    settings.SLURM_LOGIN_USER = "root"  # the user these tests run as
    cluster = inventory(["acc001"])
    reservation = block(slurm_org, cluster, ["acc001"])
    start(reservation, django_capture_on_commit_callbacks)
    assert state(reservation) == S.ACTIVE
    users = slurm_accounting.run(
        "sacctmgr", "-n", "-P", "show", "association", "account=acme-labs", "format=user"
    ).stdout.split()
    assert users.count("root") == 1  # beside the account's own (and earlier tests' users)
    name = reservation.public_id
    ran = slurm_accounting.run(
        "srun",
        f"--reservation={name}",
        "--account=acme-labs",
        "printenv",
        "SLURMD_NODENAME",
        check=False,
    )
    assert (ran.returncode, ran.stdout.strip()) == (0, "acc001")
    refused = slurm_accounting.run(
        "sbatch", f"--reservation={name}", "--account=other-co", "--wrap=true", check=False
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "sbatch: error: Batch job submission failed: Invalid account or account/partition "
        "combination specified"
    )
    # Twice: the association exists, nothing new.
    get_driver().ensure_account("acme-labs")
    assert (
        slurm_accounting.run(
            "sacctmgr", "-n", "-P", "show", "association", "account=acme-labs", "format=user"
        ).stdout.split()
        == users
    )
