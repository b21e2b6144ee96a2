"""The Slurm driver's pure parts: names, host lists, scontrol and sinfo output, error classes.
These run everywhere; nothing here starts Slurm."""

import json
import subprocess
from datetime import UTC, datetime

import pytest

from capacity.drivers import ConfigurationDriverError, PermanentDriverError, TransientDriverError
from capacity.drivers.slurm.commands import Runner, SlurmCommandError, classify
from capacity.drivers.slurm.driver import SlurmDriver
from capacity.drivers.slurm.parsing import (
    SlurmReservation,
    account_name,
    compress,
    expand,
    node_health,
    parse_key_values,
    reservation_name,
    validate_nodes,
)

SHOW_RES = (
    "ReservationName=rsv_abc StartTime=2026-12-01T10:00:00 EndTime=2026-12-02T10:00:00 "
    "Duration=1-00:00:00 Nodes=gpu[001-002,007] NodeCnt=3 CoreCnt=6 Features=(null) "
    "PartitionName=(null) Flags=SPEC_NODES TRES=cpu=6 Users=(null) Groups=(null) "
    "Accounts=acme Licenses=(null) State=INACTIVE BurstBuffer=(null) Watts=n/a "
    "MaxStartDelay=(null)"
)


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("provision:rsv_abc234", "rsv_abc234"),
        ("deprovision:rsv_abc234", "rsv_abc234"),
        ("extend:rsv_abc234", "rsv_abc234"),
    ],
)
def test_the_slurm_reservation_is_named_after_ours(key, name):
    assert reservation_name(key) == name


@pytest.mark.parametrize(
    "key",
    ["provision:", "provision:rsv_", "provision:rsv_A B", "provision:x; rm -rf /", "rsv_a=b"],
)
def test_anything_but_one_of_our_ids_is_refused_as_a_name(key):
    with pytest.raises(PermanentDriverError, match="does not name a reservation of ours"):
        reservation_name(key)


def test_accounts_are_lowercased_slugs_and_nothing_else():
    assert account_name("Acme-Labs_2") == "acme-labs_2"
    for bad in ("", "-acme", "acme labs", "acme,root", "a" * 65):
        with pytest.raises(PermanentDriverError, match="cannot be a Slurm account name"):
            account_name(bad)


def test_node_names_are_checked_and_sorted():
    assert validate_nodes(["gpu002", "gpu001", "gpu002"]) == ["gpu001", "gpu002"]
    with pytest.raises(PermanentDriverError, match=r"Not Slurm node names: 'gpu\[001-002\]'"):
        validate_nodes(["gpu[001-002]"])
    with pytest.raises(PermanentDriverError, match="at least one node"):
        validate_nodes([])


@pytest.mark.parametrize(
    ("nodes", "hostlist"),
    [
        (["gpu001"], "gpu001"),
        (["gpu001", "gpu002", "gpu003", "gpu007"], "gpu[001-003,007]"),
        (["gpu010", "gpu009", "a-n1", "a-n2"], "a-n[1-2],gpu[009-010]"),
        (["login"], "login"),
    ],
)
def test_host_lists_compress_and_expand_back(nodes, hostlist):
    assert compress(nodes) == hostlist
    assert expand(hostlist) == sorted(nodes)


def test_expand_reads_what_slurm_prints():
    assert expand("gpu[001-002],cpu[1,3-4]") == ["cpu1", "cpu3", "cpu4", "gpu001", "gpu002"]
    assert expand("(null)") == []


def test_a_reservation_line_is_parsed_exactly():
    reservation = SlurmReservation.parse(SHOW_RES)
    assert reservation == SlurmReservation(
        name="rsv_abc",
        nodes=["gpu001", "gpu002", "gpu007"],
        starts_at=datetime(2026, 12, 1, 10, tzinfo=UTC),
        ends_at=datetime(2026, 12, 2, 10, tzinfo=UTC),
        accounts=["acme"],
        state="INACTIVE",
    )


def test_values_with_spaces_stay_whole():
    fields = parse_key_values("NodeName=gpu001 OS=Linux 6.1 #1 SMP RealMemory=1000 Gres=gpu:h100:8")
    assert fields == {
        "NodeName": "gpu001",
        "OS": "Linux 6.1 #1 SMP",
        "RealMemory": "1000",
        "Gres": "gpu:h100:8",
    }


def _sinfo(*nodes: dict, errors: list | None = None) -> str:
    return json.dumps({"errors": errors or [], "nodes": list(nodes)})


def test_sinfo_json_gives_each_node_its_health_with_slurms_reason():
    report = node_health(
        _sinfo(
            {"name": "gpu001", "state": "idle", "state_flags": [], "reason": ""},
            {"name": "gpu002", "state": "idle", "state_flags": ["DRAIN"], "reason": "fan failure"},
            {"name": "gpu003", "state": "mixed", "state_flags": ["NOT_RESPONDING"], "reason": ""},
            {"name": "gpu004", "state": "down", "state_flags": [], "reason": "Not responding"},
            {"name": "gpu005", "state": "allocated", "state_flags": ["RESERVED"], "reason": ""},
        )
    )
    assert report == {
        "gpu001": "ok",
        "gpu002": "Slurm: IDLE+DRAIN: fan failure",
        "gpu003": "Slurm: MIXED+NOT_RESPONDING",
        "gpu004": "Slurm: DOWN: Not responding",
        "gpu005": "ok",
    }


def test_sinfo_without_its_controller_is_transient():
    # What sinfo --json prints, exit status 0, when slurmctld is down.
    with pytest.raises(TransientDriverError, match=r"Slurm \(sinfo\): Unspecified error"):
        node_health(_sinfo(errors=[{"error": "Unspecified error", "errno": -1}]))


@pytest.mark.parametrize(
    "message",
    [
        "slurm_load_reservations error: Unable to contact slurm controller (connect failure)",
        "Error creating the reservation: Socket timed out on send/recv operation",
        "sacctmgr: error: Problem talking to the database: Connection refused",
    ],
)
def test_an_unreachable_controller_is_transient(message):
    error = classify(SlurmCommandError("scontrol", 1, message))
    assert isinstance(error, TransientDriverError)
    assert str(error) == f"Slurm (scontrol): {message}"


@pytest.mark.parametrize(
    "message",
    [
        "Error creating the reservation: Requested reservation overlaps with another reservation",
        "Error creating the reservation: Invalid node name specified",
        "Error creating the reservation: Requested nodes are busy",
    ],
)
def test_a_refusal_is_permanent_with_slurms_message(message):
    error = classify(SlurmCommandError("scontrol", 1, message))
    assert isinstance(error, PermanentDriverError)
    assert str(error) == f"Slurm (scontrol): {message}"


@pytest.mark.parametrize(
    "message",
    [
        "Error creating the reservation: Invalid account or account/partition combination",
        "sbatch: error: Access denied",
    ],
)
def test_a_refusal_of_our_configuration_is_transient_for_operations_to_fix(message):
    error = classify(SlurmCommandError("scontrol", 1, message))
    assert type(error) is ConfigurationDriverError
    assert isinstance(error, TransientDriverError)
    assert str(error) == f"Slurm (scontrol): {message}"


def test_only_slurms_error_line_is_kept(monkeypatch):
    printed = (
        "Note, unless nodes are directly requested a reservation must exist on\n"
        "  all the nodes of the requested partition ...\n"
        "Error creating the reservation: Requested nodes are busy\n"
    )

    def fake_run(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 1, stdout="", stderr=printed)

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(SlurmCommandError) as caught:
        Runner()("scontrol", "create", "reservation")
    assert caught.value.message == "Error creating the reservation: Requested nodes are busy"


def test_sinfo_states_as_lists_are_read_too():
    report = node_health(
        _sinfo(
            {"name": "gpu001", "state": ["IDLE"], "reason": ""},
            {"name": "gpu002", "state": ["IDLE", "DRAIN"], "reason": "fan failure"},
            {"name": "gpu003", "state": ["DOWN", "NOT_RESPONDING"], "reason": ""},
        )
    )
    assert report == {
        "gpu001": "ok",
        "gpu002": "Slurm: IDLE+DRAIN: fan failure",
        "gpu003": "Slurm: DOWN+NOT_RESPONDING",
    }


@pytest.mark.parametrize("printed", [json.dumps({"errors": []}), _sinfo()])
def test_sinfo_listing_no_nodes_is_transient_not_every_node_gone(printed):
    with pytest.raises(TransientDriverError, match=r"the controller listed no nodes"):
        node_health(printed)


def test_an_unknown_message_is_transient_unless_the_controller_is_up():
    error = SlurmCommandError("scontrol", 1, "Error creating the reservation: Unexpected message")
    assert isinstance(classify(error), TransientDriverError)
    assert isinstance(classify(error, controller_up=True), PermanentDriverError)


class Recorder:
    """Stands in for the command runner: records argv, answers from a script."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, command, *args):
        self.calls.append((command, *args))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_command_that_hangs_is_transient(tmp_path, monkeypatch):
    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(cmd=args[0], timeout=kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", hang)
    with pytest.raises(TransientDriverError, match=r"Slurm \(sinfo\) did not answer within 2 s"):
        Runner(timeout=2)("sinfo", "--json")


def test_a_missing_command_is_transient_and_says_which(tmp_path):
    with pytest.raises(TransientDriverError, match=f"Cannot run {tmp_path}/scontrol"):
        Runner(bin_dir=str(tmp_path))("scontrol", "ping")


def test_commands_run_without_a_shell_in_utc_with_the_configured_conf(monkeypatch, tmp_path):
    seen = {}

    def fake_run(argv, **kwargs):
        seen.update(argv=argv, **kwargs)
        return subprocess.CompletedProcess(argv, 0, stdout="ok\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SECRET_KEY", "do-not-pass")
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/x")
    runner = Runner(bin_dir="/opt/slurm/bin", conf=str(tmp_path / "slurm.conf"), timeout=3)
    assert runner("scontrol", "ping") == "ok\n"
    assert seen["argv"] == ["/opt/slurm/bin/scontrol", "ping"]
    assert (seen["timeout"], seen.get("shell", False)) == (3, False)
    assert (seen["env"]["TZ"], seen["env"]["SLURM_CONF"]) == ("UTC", str(tmp_path / "slurm.conf"))
    assert sorted(seen["env"]) == ["HOME", "LC_ALL", "PATH", "SLURM_CONF", "TZ"]
    with pytest.raises(ValueError, match="Not a Slurm command we run: rm"):
        runner("rm", "-rf", "/")


def test_provisioning_sends_exactly_our_names_nodes_and_window(settings):
    settings.SLURM_ACCOUNTING = False
    not_found = SlurmCommandError("scontrol", 1, "Reservation rsv_abc not found")
    # Then squeue lists the jobs on the nodes: one in another block, one in none (canceled).
    runner = Recorder([not_found, "", "4100|rsv_prev\n4101|(null)\n", ""])
    access = SlurmDriver(runner).provision(
        key="provision:rsv_abc",
        account="Acme",
        nodes=["gpu002", "gpu001"],
        starts_at=datetime(2099, 1, 1, 10, tzinfo=UTC),
        ends_at=datetime(2099, 1, 1, 12, tzinfo=UTC),
    )
    assert runner.calls == [
        ("scontrol", "-o", "show", "reservation", "rsv_abc"),
        (
            "scontrol",
            "create",
            "reservation",
            "ReservationName=rsv_abc",
            "Nodes=gpu[001-002]",
            "StartTime=2099-01-01T10:00:00",
            "EndTime=2099-01-01T12:00:00",
            "Accounts=acme",
            "Flags=IGNORE_JOBS",
        ),
        (
            "squeue",
            "--noheader",
            "--nodelist=gpu[001-002]",
            "--states=RUNNING,CONFIGURING,SUSPENDED",
            "--format=%i|%v",
        ),
        ("scancel", "4101"),
    ]
    assert [n.hostname for n in access.nodes] == ["gpu001", "gpu002"]
    assert "sbatch --reservation=rsv_abc --account=acme --nodes=2 job.sh" in access.instructions
    assert access.secret == ""


PROVISION_ABC = {
    "key": "provision:rsv_abc",
    "account": "acme",
    "nodes": ["gpu001", "gpu002"],
    "starts_at": datetime(2026, 12, 1, 10, tzinfo=UTC),
    "ends_at": datetime(2026, 12, 2, 10, tzinfo=UTC),
}


def test_a_reservation_with_our_name_but_other_nodes_is_updated_to_match(settings):
    settings.SLURM_ACCOUNTING = False
    runner = Recorder([SHOW_RES, "", ""])
    access = SlurmDriver(runner).provision(**PROVISION_ABC)
    assert runner.calls[1] == (
        "scontrol",
        "update",
        "ReservationName=rsv_abc",
        "Nodes=gpu[001-002]",
        "EndTime=2026-12-02T10:00:00",
        "Accounts=acme",
    )
    assert [n.hostname for n in access.nodes] == ["gpu001", "gpu002"]


def test_an_update_slurm_refuses_is_permanent(settings):
    settings.SLURM_ACCOUNTING = False
    refused = SlurmCommandError(
        "scontrol", 1, "Error updating the reservation: Requested nodes are busy"
    )
    runner = Recorder([SHOW_RES, refused])
    with pytest.raises(
        PermanentDriverError,
        match=r"Slurm refused to update reservation rsv_abc: Error updating the reservation: "
        r"Requested nodes are busy",
    ):
        SlurmDriver(runner).provision(**PROVISION_ABC)


def test_a_reservation_whose_jobs_keep_running_is_retried_later(monkeypatch):
    monkeypatch.setattr("capacity.drivers.slurm.driver.time.sleep", lambda seconds: None)
    busy = SlurmCommandError(
        "scontrol", 1, "delete_reservation ReservationName=rsv_abc: Requested reservation is in use"
    )
    runner = Recorder(["", busy, busy, busy, busy, busy])
    with pytest.raises(TransientDriverError, match="the jobs of rsv_abc are still ending"):
        SlurmDriver(runner).deprovision(key="deprovision:rsv_abc", nodes=["gpu001"])
    assert runner.calls[0] == ("scancel", "--reservation=rsv_abc")
    assert runner.calls[1:] == [("scontrol", "delete", "ReservationName=rsv_abc")] * 5


def test_deleting_a_reservation_that_is_gone_is_done():
    gone = SlurmCommandError(
        "scontrol",
        1,
        "delete_reservation ReservationName=rsv_abc: Requested reservation is invalid",
    )
    runner = Recorder(
        [
            SlurmCommandError("scancel", 1, "scancel: error: Invalid reservation name"),
            gone,
            SlurmCommandError("scontrol", 1, "Reservation rsv_abc not found"),
        ]
    )
    assert SlurmDriver(runner).deprovision(key="deprovision:rsv_abc", nodes=["gpu001"]) is None
    assert [call[:2] for call in runner.calls] == [
        ("scancel", "--reservation=rsv_abc"),
        ("scontrol", "delete"),
        ("scontrol", "-o"),
    ]
