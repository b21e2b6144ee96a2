"""The Slurm driver: a block is an advanced reservation on its nodes, for its organization's
account, driven through Slurm's own commands (scontrol, sacctmgr, sinfo).

- Names: the Slurm reservation is named after our reservation id (the part of the key after
  "provision:" / "deprovision:" / "extend:"), the account after the organization's slug. Both
  and every node name are checked against strict patterns before they reach a command line;
  customer text never does.
- Idempotent: a reservation that already exists with our name, nodes, window and account is
  done; deleting one that is gone is done. One with our name but other nodes, end or accounts
  (a node swapped or the end moved meanwhile) is ours, so it is updated to match; only a
  refused update (or a different start) is an error.
- Reservations are made with Flags=IGNORE_JOBS: our allocation is authoritative, and the
  previous block on a node still has its jobs running when the next block is provisioned
  (PROVISIONING_LEAD before its start); that block's release cancels them. Jobs running on the
  nodes outside any reservation (started while a node was unsold) are canceled when the block
  is made or a node is swapped in.
- With accounting, the organization's account and the login user's association with it are
  made first, so the customer's `sbatch --account=ORG` is accepted.
- Errors: the controller unreachable or slow (or a command timing out) is transient, so the task
  retries; a refusal that points at our configuration (access denied, an account Slurm does not
  know while SLURM_ACCOUNTING is off) is a ConfigurationDriverError, transient too, with an
  incident for operations; anything else Slurm refuses (an overlap, an unknown node) is
  permanent, with Slurm's own error line.
- Commands run without a shell, with a timeout and a minimal environment: PATH, HOME,
  `TZ=UTC` (scontrol reads and prints local times), `LC_ALL=C` and `SLURM_CONF` from settings;
  nothing of ours (SECRET_KEY, DATABASE_URL, payment keys) reaches them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from . import (
    Access,
    ConfigurationDriverError,
    MissingBlockError,
    NodeAccess,
    PermanentDriverError,
    TransientDriverError,
)

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^rsv_[a-z0-9]{1,40}$")
ACCOUNT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
NODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
COMMANDS = frozenset({"scontrol", "sacctmgr", "sinfo", "scancel", "squeue"})
# Deleting a reservation whose jobs are still being killed: how often to try, a second apart.
DELETE_TRIES = 5
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
# How much earlier than our start a reservation of ours may begin and still count as ours.
START_LEEWAY = timedelta(seconds=60)

# Slurm's messages for "could not reach the controller (or its database) in time".
TRANSIENT_MARKERS = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "connection timed out",
    "communication connection failure",
    "zero bytes were transmitted",
    "slurm backup controller in standby mode",
    "resource temporarily unavailable",
    "unable to establish connection",
    "problem talking to the database",
    "slurmdbd",
    "insane message length",
)
# Slurm's refusals of what we asked: retrying the same request cannot help.
PERMANENT_MARKERS = (
    "overlaps with another reservation",
    "invalid node name",
    "requested nodes are busy",
    "invalid time",
    "duplicate reservation name",
    "invalid user",
    "invalid partition",
    "requested reservation is invalid",
    "invalid reservation",
)
# Refusals that mean our side is misconfigured (Slurm's permissions, accounting): every block
# would fail the same way, so they are retried while operations are told, not failed and
# refunded one by one.
CONFIGURATION_MARKERS = (
    "access denied",
    "invalid account",
)
# Down, failing or drained nodes, as sinfo --json reports them (base state or flag). UNKNOWN is
# not among them: every node is UNKNOWN for a moment after slurmctld restarts.
UNHEALTHY_STATES = frozenset({"DOWN", "FAIL", "ERROR"})
UNHEALTHY_FLAGS = frozenset({"DRAIN", "DRAINING", "DRAINED", "NOT_RESPONDING", "FAIL"})


class SlurmCommandError(Exception):
    def __init__(self, command: str, returncode: int, message: str) -> None:
        super().__init__(message)
        self.command = command
        self.returncode = returncode
        self.message = message


# --- Names and node lists -----------------------------------------------------------------------
def reservation_name(key: str) -> str:
    """`provision:rsv_abc` -> `rsv_abc`, refusing anything that is not one of our ids."""
    name = key.rsplit(":", 1)[-1]
    if not NAME_RE.fullmatch(name):
        raise PermanentDriverError(f"{key!r} does not name a reservation of ours.")
    return name


def account_name(slug: str) -> str:
    """An organization's Slurm account: its slug, lower-cased (sacctmgr lower-cases too)."""
    account = slug.lower()
    if not ACCOUNT_RE.fullmatch(account):
        raise PermanentDriverError(f"{slug!r} cannot be a Slurm account name.")
    return account


def validate_nodes(nodes: list[str]) -> list[str]:
    bad = [n for n in nodes if not isinstance(n, str) or not NODE_RE.fullmatch(n)]
    if bad:
        raise PermanentDriverError(f"Not Slurm node names: {', '.join(map(repr, bad))}.")
    if not nodes:
        raise PermanentDriverError("A Slurm reservation needs at least one node.")
    return sorted(set(nodes))


_HOST = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)$")


def compress(nodes: list[str]) -> str:
    """Slurm's compact host list: gpu001,gpu002,gpu003,gpu007 -> gpu[001-003,007]."""
    groups: dict[tuple[str, int], list[int]] = {}
    plain: list[str] = []
    for node in sorted(set(nodes)):
        match = _HOST.match(node)
        if not match:
            plain.append(node)
            continue
        digits = match["number"]
        groups.setdefault((match["prefix"], len(digits)), []).append(int(digits))
    parts = list(plain)
    for (prefix, width), numbers in sorted(groups.items()):
        numbers.sort()
        ranges: list[str] = []
        start = prev = numbers[0]
        for n in [*numbers[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            ranges.append(
                f"{start:0{width}d}" if start == prev else f"{start:0{width}d}-{prev:0{width}d}"
            )
            if n is not None:
                start = prev = n
        if len(numbers) == 1:
            parts.append(f"{prefix}{ranges[0]}")
        else:
            parts.append(f"{prefix}[{','.join(ranges)}]")
    return ",".join(parts)


def expand(hostlist: str) -> list[str]:
    """The inverse of `compress`: gpu[001-003,007],cpu1 -> every name, sorted."""
    if hostlist in ("", "(null)"):
        return []
    names: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", hostlist):
        names.extend(_expand_one(item))
    return sorted(set(names))


def _expand_one(item: str) -> list[str]:
    match = re.match(r"^(?P<head>[^\[]*)\[(?P<body>[^\]]*)\](?P<tail>.*)$", item)
    if not match:
        return [item]
    out: list[str] = []
    for part in match["body"].split(","):
        low, _, high = part.partition("-")
        width = len(low)
        for n in range(int(low), int(high or low) + 1):
            out.extend(_expand_one(f"{match['head']}{n:0{width}d}{match['tail']}"))
    return out


# --- Output parsing ---------------------------------------------------------------------------
def parse_key_values(line: str) -> dict[str, str]:
    """One `scontrol -o show ...` record. Values may hold spaces (OS=Linux 6.1 #1 ...): a token
    without "=" belongs to the value before it."""
    out: dict[str, str] = {}
    key = None
    for token in line.split():
        name, sep, value = token.partition("=")
        if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_:/]*", name):
            key = name
            out[key] = value
        elif key is not None:
            out[key] = f"{out[key]} {token}"
    return out


def parse_time(value: str) -> datetime:
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(TIME_FORMAT)


@dataclass(frozen=True)
class SlurmReservation:
    name: str
    nodes: list[str]
    starts_at: datetime
    ends_at: datetime
    accounts: list[str]
    state: str

    @classmethod
    def parse(cls, line: str) -> SlurmReservation:
        fields = parse_key_values(line)
        accounts = fields.get("Accounts", "")
        return cls(
            name=fields["ReservationName"],
            nodes=expand(fields.get("Nodes", "")),
            starts_at=parse_time(fields["StartTime"]),
            ends_at=parse_time(fields["EndTime"]),
            accounts=[] if accounts in ("", "(null)") else sorted(accounts.split(",")),
            state=fields.get("State", ""),
        )


def node_health(sinfo_json: str) -> dict[str, str]:
    """`sinfo --json` -> {node: "ok" | "Slurm: DOWN+NOT_RESPONDING: <reason>"}."""
    try:
        data = json.loads(sinfo_json)
    except json.JSONDecodeError as exc:
        raise TransientDriverError(f"sinfo --json printed something else: {exc}") from exc
    errors = [
        e.get("error", str(e)) if isinstance(e, dict) else str(e) for e in data.get("errors") or []
    ]
    if errors:  # the controller down: sinfo still exits 0, with no nodes and an error
        raise TransientDriverError(f"Slurm (sinfo): {'; '.join(errors)}")
    nodes = data.get("nodes")
    if not nodes:  # never "every node is gone": that would send them all to maintenance
        raise TransientDriverError("Slurm (sinfo): the controller listed no nodes.")
    report: dict[str, str] = {}
    for node in nodes:
        # 22.05: "state": "idle", "state_flags": ["DRAIN"]; 23.02+: "state": ["IDLE", "DRAIN"].
        raw = node.get("state", "")
        states = [str(s).upper() for s in (raw if isinstance(raw, list) else [raw]) if s]
        state = states[0] if states else ""
        flags = [*states[1:], *(str(f).upper() for f in node.get("state_flags") or [])]
        if state in UNHEALTHY_FLAGS:  # a list whose first word is a flag
            flags, state = [state, *flags], ""
        if state not in UNHEALTHY_STATES and not UNHEALTHY_FLAGS.intersection(flags):
            report[node["name"]] = "ok"
            continue
        words = "+".join(w for w in [state, *flags] if w)
        reason = (node.get("reason") or "").strip()
        report[node["name"]] = f"Slurm: {words}: {reason}" if reason else f"Slurm: {words}"
    return report


def classify(
    error: SlurmCommandError, *, controller_up: bool | None = None
) -> TransientDriverError | PermanentDriverError:
    """Transient when Slurm says it could not reach its controller or database; a
    ConfigurationDriverError (transient) when it refused us for our configuration; permanent
    when it refused the request itself. Anything else ("Unexpected message received", which
    scontrol create says when the controller is down) is transient unless the controller is
    known to be up."""
    text = error.message.lower()
    message = f"Slurm ({error.command}): {error.message}"
    if any(marker in text for marker in TRANSIENT_MARKERS):
        return TransientDriverError(message)
    if any(marker in text for marker in CONFIGURATION_MARKERS):
        return ConfigurationDriverError(message)
    if any(marker in text for marker in PERMANENT_MARKERS) or controller_up:
        return PermanentDriverError(message)
    return TransientDriverError(message)


# --- Running commands -------------------------------------------------------------------------
class Runner:
    """Runs one Slurm command: list arguments, no shell, a timeout, TZ=UTC and SLURM_CONF."""

    def __init__(self, *, bin_dir: str = "", conf: str = "", timeout: float = 10.0) -> None:
        self.bin_dir = bin_dir
        self.conf = conf
        self.timeout = timeout

    def env(self) -> dict[str, str]:
        # Only what Slurm's commands need: not our secrets, nor a surrounding Slurm job's
        # SLURM_JOB_ID and the like.
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "TZ": "UTC",
            "LC_ALL": "C",
        }
        if self.conf:
            env["SLURM_CONF"] = self.conf
        return env

    def path(self, command: str) -> str:
        if command not in COMMANDS:
            raise ValueError(f"Not a Slurm command we run: {command}")
        return str(Path(self.bin_dir) / command) if self.bin_dir else command

    def __call__(self, command: str, *args: str) -> str:
        """stdout on success; SlurmCommandError with Slurm's message when it exits non-zero;
        TransientDriverError on a timeout or a missing command."""
        argv = [self.path(command), *args]
        try:
            proc = subprocess.run(  # noqa: S603 - list arguments, validated, no shell
                argv,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TransientDriverError(
                f"Slurm ({command}) did not answer within {self.timeout:g} s."
            ) from exc
        except OSError as exc:  # not installed, or SLURM_BIN_DIR wrong: fixable by operations
            raise TransientDriverError(f"Cannot run {argv[0]}: {exc.strerror or exc}.") from exc
        if proc.returncode != 0:
            text = proc.stderr.strip() or proc.stdout.strip() or "no message"
            raise SlurmCommandError(command, proc.returncode, error_line(text)[:500])
        return proc.stdout


def error_line(text: str) -> str:
    """Slurm's error out of what a failed command printed: scontrol create prefixes its
    error with a multi-line "Note, unless nodes are directly requested ..." that says nothing
    about it. The lines that say "error" when there are any, else everything."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return " ".join(errors or lines)


# --- The driver ----------------------------------------------------------------------------------
class SlurmDriver:
    def __init__(self, runner: Runner | None = None) -> None:
        self.run = runner or Runner(
            bin_dir=settings.SLURM_BIN_DIR,
            conf=settings.SLURM_CONF,
            timeout=settings.SLURM_COMMAND_TIMEOUT,
        )

    def _failure(self, exc: SlurmCommandError) -> TransientDriverError | PermanentDriverError:
        text = exc.message.lower()
        if any(m in text for m in (*TRANSIENT_MARKERS, *PERMANENT_MARKERS)):
            return classify(exc)
        return classify(exc, controller_up=self.controller_up())

    def controller_up(self) -> bool:
        try:
            return "is UP" in self.run("scontrol", "ping")
        except (SlurmCommandError, TransientDriverError):
            return False

    # Reading
    def show(self, name: str) -> SlurmReservation | None:
        """Slurm's view of one reservation, or None when it does not exist."""
        try:
            out = self.run("scontrol", "-o", "show", "reservation", name)
        except SlurmCommandError as exc:
            if "not found" in exc.message.lower():
                return None
            raise self._failure(exc) from exc
        lines = [line for line in out.splitlines() if line.startswith("ReservationName=")]
        if not lines:  # "No reservations in the system" exits 0 on some versions
            return None
        return SlurmReservation.parse(lines[0])

    # Accounts
    def accounting_enabled(self) -> bool:
        return bool(settings.SLURM_ACCOUNTING)

    def login_user(self, account: str) -> str:
        """The Unix user the access details tell the customer to log in as."""
        return settings.SLURM_LOGIN_USER or account

    def ensure_account(self, account: str) -> None:
        """With accounting, make the organization's account and the login user's association
        with it if they are missing (without the association, enforced associations refuse
        the customer's jobs). sacctmgr says "Nothing new added" for what exists: done too."""
        if not self.accounting_enabled():
            return
        user = self.login_user(account)
        if not NODE_RE.fullmatch(user):  # the same strictness as node names: no options
            raise ConfigurationDriverError(f"{user!r} cannot be a Slurm user name.")
        try:
            out = self.run("sacctmgr", "-n", "-P", "show", "account", account, "format=account")
        except SlurmCommandError as exc:
            raise self._failure(exc) from exc
        if account not in out.split():
            self._sacctmgr_add(
                "account",
                account,
                f"Description=Hyperblock organization {account}",
                f"Organization={account}",
            )
        try:
            out = self.run(
                "sacctmgr",
                "-n",
                "-P",
                "show",
                "association",
                f"account={account}",
                f"user={user}",
                "format=user",
            )
        except SlurmCommandError as exc:
            raise self._failure(exc) from exc
        if user not in out.split():
            self._sacctmgr_add("user", user, f"Account={account}")

    def _sacctmgr_add(self, *args: str) -> None:
        try:
            self.run("sacctmgr", "-i", "add", *args)
        except SlurmCommandError as exc:
            text = exc.message.lower()
            if "nothing new added" in text or "already exists" in text:
                return
            raise self._failure(exc) from exc

    # The protocol
    def provision(self, *, key: str, account: str, nodes: list[str], starts_at, ends_at) -> Access:  # type: ignore[no-untyped-def]
        """Create the reservation `NAME` on exactly `nodes` for [starts_at, ends_at) and
        `account`. Done already (same nodes, window and account) is done."""
        name = reservation_name(key)
        account = account_name(account)
        nodes = validate_nodes(nodes)
        self.ensure_account(account)
        existing = self.show(name)
        if existing is None:
            # A start already past is sent as the present moment, never as "now" for a start
            # that is still ahead: the block before ours on these nodes runs until our start,
            # and Slurm refuses an overlap. (Slurm takes a start a few seconds past as it is.)
            start = format_time(max(starts_at, timezone.now()))
            try:
                self.run(
                    "scontrol",
                    "create",
                    "reservation",
                    f"ReservationName={name}",
                    f"Nodes={compress(nodes)}",
                    f"StartTime={start}",
                    f"EndTime={format_time(ends_at)}",
                    f"Accounts={account}",
                    "Flags=IGNORE_JOBS",
                )
            except SlurmCommandError as exc:
                if "duplicate reservation name" not in exc.message.lower():
                    raise self._failure(exc) from exc
                # Made by a concurrent attempt meanwhile: compare below.
            else:
                logger.info("slurm reservation %s created on %s", name, compress(nodes))
                self.cancel_strays(nodes)
                return self.access(name, account, nodes, starts_at, ends_at)
            existing = self.show(name)
            if existing is None:
                raise TransientDriverError(f"Slurm reservation {name} vanished while created.")
        differences = _differences(existing, account, nodes, starts_at, ends_at)
        if any(d.startswith("start ") for d in differences):
            raise PermanentDriverError(
                f"Slurm already has a reservation named {name} with {'; '.join(differences)}."
            )
        if differences:
            # The name is ours: a node swapped or the end moved since it was made. Converge.
            self._update(
                name,
                [
                    f"Nodes={compress(nodes)}",
                    f"EndTime={format_time(ends_at)}",
                    f"Accounts={account}",
                ],
            )
        self.cancel_strays(nodes)
        return self.access(name, account, nodes, starts_at, ends_at)

    def _update(self, name: str, changes: list[str]) -> None:
        try:
            self.run("scontrol", "update", f"ReservationName={name}", *changes)
        except SlurmCommandError as exc:
            error = self._failure(exc)
            if isinstance(error, PermanentDriverError):
                raise PermanentDriverError(
                    f"Slurm refused to update reservation {name}: {exc.message}"
                ) from exc
            raise error from exc
        logger.info("slurm reservation %s updated: %s", name, " ".join(changes))

    def describe(self, *, key: str, account: str, nodes: list[str], starts_at, ends_at) -> Access:  # type: ignore[no-untyped-def]
        """The access details for the block as it is now (after a swap or an extension)."""
        return self.access(
            reservation_name(key), account_name(account), validate_nodes(nodes), starts_at, ends_at
        )

    def blocks(self) -> list[str]:
        """Our reservations in Slurm (named rsv_...), for reconcile to tear down leftovers."""
        try:
            out = self.run("scontrol", "-o", "show", "reservation")
        except SlurmCommandError as exc:
            if "no reservations" in exc.message.lower():
                return []
            raise self._failure(exc) from exc
        names = [
            parse_key_values(line).get("ReservationName", "")
            for line in out.splitlines()
            if line.startswith("ReservationName=")
        ]
        return sorted(n for n in names if NAME_RE.fullmatch(n))

    def deprovision(self, *, key: str, nodes: list[str]) -> None:
        """End the block: cancel its jobs, then delete the reservation. One already gone is
        done; one whose jobs are still ending after a few seconds is a transient error (the
        release task tries again)."""
        name = reservation_name(key)
        try:
            self.run("scancel", f"--reservation={name}")
        except SlurmCommandError as exc:
            if isinstance(classify(exc), TransientDriverError):
                raise classify(exc) from exc
            # No such reservation, or no jobs in it: nothing to cancel.
        for attempt in range(1, DELETE_TRIES + 1):
            try:
                self.run("scontrol", "delete", f"ReservationName={name}")
            except SlurmCommandError as exc:
                text = exc.message.lower()
                if "in use" in text:
                    if attempt < DELETE_TRIES:
                        time.sleep(1)
                        continue
                    raise TransientDriverError(
                        f"Slurm (scontrol): the jobs of {name} are still ending: {exc.message}"
                    ) from exc
                # Already gone is done; any other refusal is not.
                if ("invalid" in text or "not found" in text) and self.show(name) is None:
                    return
                raise self._failure(exc) from exc
            logger.info("slurm reservation %s deleted", name)
            return

    def extend(self, *, key: str, nodes: list[str], ends_at) -> None:  # type: ignore[no-untyped-def]
        """Make the reservation end at `ends_at` on `nodes` (a longer block, or a node swapped
        out of it). Already so is done."""
        name = reservation_name(key)
        nodes = validate_nodes(nodes)
        existing = self.show(name)
        if existing is None:
            raise MissingBlockError(f"Slurm has no reservation named {name} to extend.")
        changes = []
        if existing.ends_at != ends_at.astimezone(UTC).replace(microsecond=0):
            changes.append(f"EndTime={format_time(ends_at)}")
        if existing.nodes != nodes:
            changes.append(f"Nodes={compress(nodes)}")
        if not changes:
            return
        self._update(name, changes)
        if existing.nodes != nodes:
            self.cancel_strays(nodes)

    def cancel_strays(self, nodes: list[str]) -> list[str]:
        """Cancel jobs running on `nodes` outside any reservation. The block's reservation is
        made with IGNORE_JOBS (the block before it may still be running its own jobs, which that
        block's release ends), so a job started on the node while it was unsold would otherwise
        keep running inside the customer's block. Returns the ids canceled."""
        try:
            out = self.run(
                "squeue",
                "--noheader",
                f"--nodelist={compress(nodes)}",
                "--states=RUNNING,CONFIGURING,SUSPENDED",
                "--format=%i|%v",
            )
        except SlurmCommandError as exc:
            raise self._failure(exc) from exc
        strays = []
        for line in out.splitlines():
            job, _, reservation = line.strip().partition("|")
            if job.isdigit() and reservation in ("", "(null)"):
                strays.append(job)
        if strays:
            try:
                self.run("scancel", *strays)
            except SlurmCommandError as exc:
                raise self._failure(exc) from exc
            logger.warning(
                "canceled jobs %s running outside any reservation on %s",
                ", ".join(strays),
                compress(nodes),
            )
        return strays

    def health(self, *, nodes: list[str]) -> dict[str, str]:
        """Each node as sinfo sees it; a node Slurm does not know is not healthy either."""
        try:
            out = self.run("sinfo", "--json")
        except SlurmCommandError as exc:
            raise self._failure(exc) from exc
        report = node_health(out)
        return {node: report.get(node, "Slurm: no such node in the cluster") for node in nodes}

    # Access
    def access(
        self, name: str, account: str, nodes: list[str], starts_at: datetime, ends_at: datetime
    ) -> Access:
        host = settings.SLURM_LOGIN_HOST
        user = self.login_user(account)
        port = settings.SLURM_LOGIN_PORT
        count = len(nodes)
        instructions = (
            f"Your block is Slurm reservation {name} for account {account} on "
            f"{compress(nodes)}, {format_time(starts_at)}–{format_time(ends_at)} UTC. "
            f"Log in with ssh -p {port} {user}@{host}, then submit batch work with "
            f"sbatch --reservation={name} --account={account} --nodes={count} job.sh, or run "
            f"interactively with srun --reservation={name} --account={account} "
            f"--nodes={count} --pty bash."
        )
        return Access(
            nodes=[
                NodeAccess(hostname=node, ssh_host=host, ssh_port=port, ssh_user=user)
                for node in nodes
            ],
            instructions=instructions,
        )


def _differences(
    existing: SlurmReservation,
    account: str,
    nodes: list[str],
    starts_at: datetime,
    ends_at: datetime,
) -> list[str]:
    out = []
    if existing.nodes != nodes:
        out.append(f"nodes {compress(existing.nodes)} instead of {compress(nodes)}")
    if existing.accounts != [account]:
        out.append(f"accounts {','.join(existing.accounts) or '(none)'} instead of {account}")
    if existing.ends_at != ends_at.astimezone(UTC).replace(microsecond=0):
        out.append(f"end {format_time(existing.ends_at)} instead of {format_time(ends_at)}")
    # Created for a start already near or past, Slurm's start is when it was made.
    latest = max(starts_at, timezone.now())
    if not (starts_at - START_LEEWAY <= existing.starts_at <= latest):
        out.append(f"start {format_time(existing.starts_at)} instead of {format_time(starts_at)}")
    return out
