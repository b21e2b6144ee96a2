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

import logging
import time
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from .. import (
    Access,
    ConfigurationDriverError,
    MissingBlockError,
    NodeAccess,
    PermanentDriverError,
    TransientDriverError,
)
from .commands import (
    PERMANENT_MARKERS,
    TRANSIENT_MARKERS,
    Runner,
    SlurmCommandError,
    classify,
)
from .parsing import (
    NAME_RE,
    NODE_RE,
    SlurmReservation,
    account_name,
    compress,
    format_time,
    node_health,
    parse_key_values,
    reservation_name,
    validate_nodes,
)

logger = logging.getLogger(__name__)

# Deleting a reservation whose jobs are still being killed: how often to try, a second apart.
DELETE_TRIES = 5
# How much earlier than our start a reservation of ours may begin and still count as ours.
START_LEEWAY = timedelta(seconds=60)


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
    def provision(
        self, *, key: str, account: str, nodes: list[str], starts_at: datetime, ends_at: datetime
    ) -> Access:
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

    def describe(
        self, *, key: str, account: str, nodes: list[str], starts_at: datetime, ends_at: datetime
    ) -> Access:
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

    def extend(self, *, key: str, nodes: list[str], ends_at: datetime) -> None:
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
