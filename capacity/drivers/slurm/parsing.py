"""Slurm's names and text: our names checked, host lists, scontrol records, times and
sinfo's health report."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from .. import (
    PermanentDriverError,
    TransientDriverError,
)

NAME_RE = re.compile(r"^rsv_[a-z0-9]{1,40}$")
ACCOUNT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
NODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

# Down, failing or drained nodes, as sinfo --json reports them (base state or flag). UNKNOWN is
# not among them: every node is UNKNOWN for a moment after slurmctld restarts.
UNHEALTHY_STATES = frozenset({"DOWN", "FAIL", "ERROR"})
UNHEALTHY_FLAGS = frozenset({"DRAIN", "DRAINING", "DRAINED", "NOT_RESPONDING", "FAIL"})


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
