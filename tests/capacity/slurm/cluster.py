"""A real Slurm cluster on this machine, in one temporary folder: munged with its own key and
socket, slurmctld, one slurmd per fake GPU node (each on its own loopback port) and, when asked
for, slurmdbd on a throwaway MariaDB. Only loopback is used.

Standard library only, so it also runs on its own to try the Slurm driver by hand:

    sudo .venv/bin/python -m tests.capacity.slurm.cluster   # prints SLURM_CONF, Ctrl-C stops
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

NEEDED = ("munged", "mungekey", "slurmctld", "slurmd", "scontrol", "sinfo", "sbatch")
NEEDED_ACCOUNTING = ("slurmdbd", "sacctmgr", "mariadb-install-db", "mysqld")
INSTALL_HINT = "apt-get install slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
GPUS_PER_NODE = 8
SLURMD_TIMEOUT = 6  # seconds: a dead slurmd shows NOT_RESPONDING about 14 s later


def missing(names: Iterable[str]) -> list[str]:
    return [name for name in names if _which(name) is None]


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def free_ports(count: int) -> list[int]:
    """Ports free on loopback now (the kernel picks them; kept open until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait(what: str, check, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"Slurm test cluster: {what} within {timeout:.0f} s")
        time.sleep(interval)


class SlurmCluster:
    """Start with `start()`, stop with `stop()`; `env` is what Slurm's commands need."""

    def __init__(
        self,
        nodes: int = 16,
        *,
        prefix: str = "gpu",
        accounting: bool = False,
        name: str = "hyperblock",
    ) -> None:
        self.node_names = [f"{prefix}{i:03d}" for i in range(1, nodes + 1)]
        self.accounting = accounting
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix="hb-slurm-"))
        self.root.chmod(0o755)  # munged runs as the munge user and must reach its folder
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}
        ports = free_ports(len(self.node_names) + 3)
        self.ctld_port, self.dbd_port, self.db_port = ports[:3]
        self.node_ports = dict(zip(self.node_names, ports[3:], strict=True))

    # --- environment -----------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update({"SLURM_CONF": str(self.conf), "TZ": "UTC", "LC_ALL": "C"})
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 20
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("scontrol", *args, check=check)

    def reservation(self, name: str) -> dict[str, str] | None:
        """Slurm's own view of one reservation (`scontrol -o show res NAME`), or None."""
        proc = self.scontrol("-o", "show", "reservation", name, check=False)
        if proc.returncode != 0:
            return None
        return _key_values(proc.stdout.strip())

    def reservations(self) -> list[str]:
        out = self.scontrol("-o", "show", "reservation").stdout
        return [
            _key_values(line)["ReservationName"]
            for line in out.splitlines()
            if line.startswith("ReservationName=")
        ]

    def delete_all_reservations(self) -> None:
        for name in self.reservations():
            self.scontrol("delete", f"ReservationName={name}", check=False)

    def node_states(self) -> dict[str, list[str]]:
        data = json.loads(self.run("sinfo", "--json").stdout)
        return {n["name"]: [n["state"].upper(), *n.get("state_flags", [])] for n in data["nodes"]}

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> SlurmCluster:
        try:
            self._write_files()
            self._start_munge()
            if self.accounting:
                self._start_database()
                self._start_slurmdbd()
            self.start_controller()
            for node in self.node_names:
                self.start_slurmd(node)
            self.wait_idle(self.node_names)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self._terminate(name)
        shutil.rmtree(self.root, ignore_errors=True)

    def start_controller(self) -> None:
        running = self.procs.get("slurmctld")
        if running is not None and running.poll() is None:
            return
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        _wait(
            "slurmctld answers",
            lambda: self.scontrol("ping", check=False).stdout.count("is UP"),
            timeout=20,
        )
        # A restarted controller knows its nodes again once their slurmd registers.
        running = [n for n in self.node_names if f"slurmd:{n}" in self.procs]

        def registered() -> bool:
            states = self.node_states()
            return all(states.get(n, ["UNKNOWN"])[0] != "UNKNOWN" for n in running)

        _wait("slurmd registered again", registered, timeout=30, interval=0.2)

    def stop_controller(self) -> None:
        self._terminate("slurmctld")

    def start_slurmd(self, node: str) -> None:
        self._spawn(f"slurmd:{node}", ["slurmd", "-D", "-N", node])

    def kill_slurmd(self, node: str) -> None:
        """Kill one node's slurmd outright, as a crashed machine would vanish."""
        proc = self.procs.pop(f"slurmd:{node}")
        proc.kill()
        proc.wait(timeout=10)

    def wait_idle(self, nodes: Iterable[str], timeout: float = 30) -> None:
        wanted = set(nodes)

        def idle() -> bool:
            states = self.node_states()
            return all(states.get(n, ["?"])[0] == "IDLE" and len(states[n]) == 1 for n in wanted)

        _wait(f"nodes {sorted(wanted)} idle", idle, timeout=timeout, interval=0.2)

    def wait_state(self, node: str, flag: str, timeout: float = 45) -> list[str]:
        return _wait(
            f"{node} {flag}",
            lambda: (s := self.node_states().get(node, [])) and flag in s and s,
            timeout=timeout,
            interval=0.5,
        )

    # --- internals ---------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name.replace(':', '-')}.out", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [_which(args[0]) or args[0], *args[1:]],  # daemons live in /usr/sbin
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the daemons
            **kwargs,
        )
        log.close()
        self.procs[name] = proc
        time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at once: {self.log(name)}")
        return proc

    def _terminate(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log(self, name: str) -> str:
        path = self.root / "log" / f"{name.replace(':', '-')}.out"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _write_files(self) -> None:
        for folder in ("etc", "log", "state", "spool", "gres", "run", "db"):
            (self.root / folder).mkdir()
        for i in range(GPUS_PER_NODE):
            (self.root / "gres" / f"gpu{i}").touch()
        node_lines = "\n".join(
            f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={p} CPUs=2 "
            f"RealMemory=1000 Gres=gpu:h100:{GPUS_PER_NODE} State=UNKNOWN"
            for n, p in self.node_ports.items()
        )
        accounting = ""
        if self.accounting:
            accounting = (
                "AccountingStorageType=accounting_storage/slurmdbd\n"
                "AccountingStorageHost=127.0.0.1\n"
                f"AccountingStoragePort={self.dbd_port}\n"
                f"AccountingStoragePass={self.munge_socket}\n"
                "AccountingStorageEnforce=associations\n"
            )
        r = self.root
        self.conf.write_text(
            f"""ClusterName={self.name}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MailProg=/bin/true
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout={SLURMD_TIMEOUT}
SlurmctldTimeout=10
MessageTimeout=5
InactiveLimit=0
MinJobAge=30
KillWait=1
SchedulerType=sched/backfill
{accounting}{node_lines}
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        (self.root / "etc" / "gres.conf").write_text(
            f"Name=gpu Type=h100 File={r}/gres/gpu[0-{GPUS_PER_NODE - 1}]\n"
        )

    def _start_munge(self) -> None:
        folder = self.munge_socket.parent
        folder.mkdir(mode=0o755)
        user = pwd.getpwnam("munge")
        group = grp.getgrnam("munge")
        key = folder / "munge.key"
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True)
        for path in (folder, key):
            os.chown(path, user.pw_uid, group.gr_gid)
        key.chmod(0o600)
        folder.chmod(0o755)
        self._spawn(
            "munged",
            [
                _which("munged") or "munged",
                "-F",
                "-f",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={folder / 'munged.pid'}",
                f"--log-file={folder / 'munged.log'}",
                f"--seed-file={folder / 'munged.seed'}",
            ],
            user=user.pw_uid,
            group=group.gr_gid,
            extra_groups=[],
        )
        _wait("munged's socket", self.munge_socket.exists, timeout=10)

    def _start_database(self) -> None:
        data = self.root / "db" / "data"
        subprocess.run(
            [
                _which("mariadb-install-db") or "mariadb-install-db",
                "--no-defaults",  # first, or the machine's my.cnf applies
                f"--datadir={data}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self._spawn(
            "mysqld",
            [
                _which("mysqld") or "mysqld",
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={self.root / 'db' / 'mysqld.sock'}",
                f"--pid-file={self.root / 'db' / 'mysqld.pid'}",
                "--bind-address=127.0.0.1",
                f"--port={self.db_port}",
                "--user=root",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=16M",
            ],
        )

        def ready() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.db_port), timeout=1).close()
            except OSError:
                return False
            return True

        _wait("MariaDB answers", ready, timeout=60)

    def _start_slurmdbd(self) -> None:
        dbd = self.root / "etc" / "slurmdbd.conf"
        dbd.write_text(
            f"""AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
PidFile={self.root}/run/slurmdbd.pid
LogFile={self.root}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=root
StorageLoc=slurm_acct
"""
        )
        dbd.chmod(0o600)
        self._spawn("slurmdbd", [_which("slurmdbd") or "slurmdbd", "-D"])

        def ready() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.dbd_port), timeout=1).close()
            except OSError:
                return False
            return True

        _wait("slurmdbd answers", ready, timeout=30)
        # The cluster must be known to the database before slurmctld registers with it.
        self.run("sacctmgr", "-i", "add", "cluster", self.name)


def _key_values(line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


def main() -> None:  # pragma: no cover - a tool for trying the driver by hand
    absent = missing(NEEDED)
    if absent:
        raise SystemExit(f"Missing {', '.join(absent)}: {INSTALL_HINT}")
    accounting = not missing(NEEDED_ACCOUNTING)
    cluster = SlurmCluster(accounting=accounting).start()
    print(f"export SLURM_CONF={cluster.conf} SLURM_ACCOUNTING={str(accounting).lower()}")
    print("export PROVISIONING_DRIVER=capacity.drivers.slurm.SlurmDriver")
    print(f"nodes {cluster.node_names[0]}..{cluster.node_names[-1]}; Ctrl-C stops the cluster")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
