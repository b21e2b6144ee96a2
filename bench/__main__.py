"""Run the benchmarks and print a report: `python -m bench [SUITE | --only SUITE] [--quick]`.

Each benchmark runs in its own process (`python -m bench.search --db ...`,
`python -m bench.throughput`, `python -m bench.webhooks`) on a fresh database, so Django's
settings are read once per database. The report is printed and written as JSON to
bench/results/latest.json. The mixed load test takes `--duration` and `--users`
(`python -m bench load --duration 300 --users 20`).

Exit status: 0 when every benchmark ran, nothing was oversold and the load test saw no errors
and kept its invariants; missed latency or throughput targets are reported as FAIL but do not
change the status (they are measurements, not tests).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import database

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
JOB_TIMEOUT = 15 * 60  # seconds; a hung benchmark must not hang `make bench`
SUITES = ("search", "throughput", "webhooks", "provisioning", "api", "keys", "load")
DB_LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


@dataclass(frozen=True)
class Job:
    suite: str  # which benchmark: one of SUITES
    db: str
    module: str
    args: tuple[str, ...] = ()


JOBS = (
    Job("search", "sqlite", "bench.search", ("--db", "sqlite")),
    Job("search", "postgres", "bench.search", ("--db", "postgres")),
    Job("throughput", "postgres", "bench.throughput"),
    Job("webhooks", "postgres", "bench.webhooks"),
    Job("provisioning", "postgres", "bench.provisioning"),
    Job("api", "postgres", "bench.api"),
    Job("keys", "postgres", "bench.keys"),
    Job("load", "postgres", "bench.load"),
)


# --- Running ----------------------------------------------------------------------------------
def run_job(
    job: Job, *, quick: bool, scratch: Path, extra: tuple[str, ...] = (), timeout: int = JOB_TIMEOUT
) -> dict:
    """Run one benchmark process; its progress streams through, its result comes back as JSON."""
    out = scratch / f"{job.suite}-{job.db}.json"
    command = [sys.executable, "-m", job.module, *job.args, *extra, "--out", str(out)]
    if quick:
        command.append("--quick")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": database.SETTINGS}
    print(f"\n▶ {job.suite} on {DB_LABELS[job.db]}", file=sys.stderr, flush=True)
    began = time.perf_counter()
    try:
        finished = subprocess.run(command, cwd=ROOT, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    seconds = round(time.perf_counter() - began, 1)
    if finished.returncode != 0 or not out.exists():
        return {"error": f"exited with status {finished.returncode}", "seconds": seconds}
    return {**json.loads(out.read_text()), "seconds": seconds}


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return done.stdout.strip()


def metadata(*, quick: bool) -> dict:
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "commit": _git("rev-parse", "--short", "HEAD"),
        # The app code, not this folder: whether the figures belong to `commit` exactly.
        "uncommitted_changes": bool(_git("status", "--porcelain", "--", ".", ":(exclude)bench")),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "postgres_url": database.postgres_url(),
    }


# --- Report -----------------------------------------------------------------------------------
def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _latency_row(label: str, latency: dict, outcomes: dict | None = None) -> str:
    if not latency.get("n"):
        return f"    {label:<12} no queries"
    seen = ", ".join(f"{k} {v}" for k, v in sorted((outcomes or {}).items()))
    return (
        f"    {label:<12}{latency['n']:>5}{latency['p50']:>9.1f}{latency['p95']:>9.1f}"
        f"{latency['max']:>9.1f}   {seen}"
    )


def _all_outcomes(result: dict) -> dict[str, int]:
    total: dict[str, int] = {}
    for figures in result["by_category"].values():
        for outcome, count in figures["outcomes"].items():
            total[outcome] = total.get(outcome, 0) + count
    return total


def search_report(db: str, result: dict) -> list[str]:
    if "error" in result:
        return [f"  {DB_LABELS[db]}: ERROR {result['error']}"]
    data = result["dataset"]
    lines = [
        f"  {DB_LABELS[db]}: {data['nodes']:,} nodes in {data['clusters']} clusters, "
        f"{data['allocations']:,} live allocations in {data['reservations']:,} reservations "
        f"(built in {data['build_seconds']} s; overlapping pairs {data['overlapping_live_pairs']})",
        f"    {'queries':<12}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}   outcomes",
        _latency_row("all", result["latency_ms"], _all_outcomes(result)),
    ]
    for category, figures in result["by_category"].items():
        lines.append(_latency_row(category, figures["latency_ms"], figures["outcomes"]))
    statements = ", ".join(
        f"{category} {profile['sql_statements']}"
        for category, profile in result["profiles"].items()
    )
    lines.append(f"    SQL statements per search: {statements}")
    lines.append(
        f"    p95 {result['latency_ms']['p95']:.1f} ms, target < {result['target_p95_ms']:.0f} ms: "
        f"{_verdict(result['passed'])}"
    )
    return lines


def throughput_report(result: dict) -> list[str]:
    if "error" in result:
        return [f"  PostgreSQL: ERROR {result['error']}"]
    latency = result["latency_ms"]
    solo = result["single_client"]
    one = solo["one_reservation"]
    errors = ", ".join(f"{k} {v}" for k, v in result["other_errors"].items()) or "none"
    lines = [
        f"  PostgreSQL: {result['clients']} clients, one pool of {result['pool']['nodes']} nodes "
        f"in {result['pool']['clusters']} clusters, {result['wall_seconds']} s",
        f"    attempts {result['attempts']}: reserved {result['reserved']}, "
        f"sold out {result['sold_out']}, other errors: {errors}",
        f"    {result['reservations_per_second']:.1f} reservations/s, target >= "
        f"{result['target_per_second']:.0f}/s: {_verdict(result['passed'])}",
        f"    latency p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, "
        f"max {latency['max']:.1f} ms; {result['serial_ms_per_reservation']} ms of pool time "
        "per reservation",
        f"    one client alone: {solo['reservations_per_second']:.1f} reservations/s, "
        f"p50 {solo['latency_ms']['p50']:.1f} ms",
        f"    one reservation: {one['sql_statements']} SQL statements, "
        f"{one['under_pool_lock']} of them while holding the pool lock "
        f"({', '.join(f'{v} {k}' for k, v in one['under_pool_lock_kinds'].items())})",
        f"    oversold (overlapping live allocations on one node): {result['oversold']} "
        f"({_verdict(result['oversold'] == 0)})",
    ]
    for kind, message in result["first_error_messages"].items():
        lines.append(f"    first {kind}: {message}")
    return lines


def webhooks_report(result: dict) -> list[str]:
    if "error" in result:
        return [f"  PostgreSQL: ERROR {result['error']}"]
    latency = result["ack_latency_ms"]
    statuses = ", ".join(
        f"{code}: {count}" for code, count in sorted(result["http_statuses"].items())
    )
    return [
        f"  PostgreSQL, gunicorn with {result['web_workers']} workers, "
        f"{result['senders']} senders: {result['events_sent']:,} signed events "
        f"({result['duplicates_sent']:,} duplicates), HTTP {statuses}",
        f"    {result['acknowledged_per_second']:.1f} events/s acknowledged; latency p50 "
        f"{latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms; "
        f"target p99 < {result['target_p99_ms']:.0f} ms: {_verdict(result['passed'])}",
        f"    stored {result['stored_events']:,} events; processed exactly once: "
        f"{_verdict(result['processed_exactly_once'])} (all done "
        f"{result['seconds_until_all_processed']} s after the burst began, "
        f"{result['still_pending']} pending)",
    ]


def provisioning_report(result: dict) -> list[str]:
    if "error" in result:
        return [f"  PostgreSQL: ERROR {result['error']}"]
    latency = result["webhook_to_active_ms"]
    outcomes = ", ".join(f"{k} {v}" for k, v in result["outcomes"].items())
    if not latency.get("n"):
        return [f"  {result['reservations']} reservations: {outcomes}; no latencies"]
    return [
        f"  {result['reservations']} reservations, simulated driver at zero latency: {outcomes}",
        f"    payment webhook to active: p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms, "
        f"max {latency['max']:.0f} ms; target p95 < {result['target_p95_ms'] / 1000:.0f} s: "
        f"{_verdict(result['passed'])}",
    ]


def api_report(result: dict) -> list[str]:
    if "error" in result:
        return [f"  PostgreSQL: ERROR {result['error']}"]
    listing, bare, usage = result["reservation_list"], result["bare_view"], result["usage"]
    share = f"{result['share_of_ceiling']:.0%}"
    return [
        f"  GET /api/v1/reservations/ (20 items, API key): "
        f"{listing['requests_per_second']:.0f} req/s, p99 {listing['latency_ms']['p99']:.1f} ms, "
        f"errors {listing['errors']}",
        f"  bare Django JSON view (/healthz): {bare['requests_per_second']:.0f} req/s, "
        f"p99 {bare['latency_ms']['p99']:.1f} ms",
        f"    {share} of the ceiling, target >= 50%: {_verdict(result['list_passed'])}",
        f"  POST /api/v1/usage/: {usage['events_per_second']:,} events/s "
        f"({usage['stored']:,} stored), target >= 10,000/s: {_verdict(usage['passed'])}",
    ]


def keys_report(result: dict) -> list[str]:
    if "error" in result:
        return [f"  PostgreSQL: ERROR {result['error']}"]
    ours, theirs = result["ours"], result["has_api_key"]
    return [
        f"  ours: p50 {ours['p50'] * 1000:.0f} µs, p99 {ours['p99'] * 1000:.0f} µs; queries "
        f"{ours['queries_cached']} cached, {ours['queries_cold']} cold",
        f"  djangorestframework-api-key HasAPIKey: p50 {theirs['p50'] * 1000:.0f} µs, "
        f"p99 {theirs['p99'] * 1000:.0f} µs; queries {theirs['queries']}",
        f"    ours is {result['median_ratio']}x cheaper at the median, target >= 10x and at most "
        f"one query: {_verdict(result['passed'])}",
    ]


def _endpoint_row(name: str, figures: dict) -> str:
    latency = figures["latency_ms"]
    refused = ", ".join(f"{code} {n}" for code, n in figures["refused"].items())
    return (
        f"    {name:<52}{figures['requests']:>7,}{figures['per_second']:>8.2f}"
        f"{latency.get('p50', 0):>9.1f}{latency.get('p99', 0):>9.1f}{figures['errors']:>7}"
        f"{'   ' + refused if refused else ''}"
    )


def load_report(result: dict) -> list[str]:
    if "error" in result:
        return [f"  PostgreSQL: ERROR {result['error']}"]
    load = result["load"]
    endpoints = load["endpoints"]
    lines = [
        f"  {result['users']} users for {load['wall_seconds']} s, {result['organizations']} "
        f"customer organizations: {load['requests']:,} requests, "
        f"{load['requests_per_second']:.1f} req/s; errors {result['errors']} (target 0): "
        f"{_verdict(result['errors'] == 0)}",
        f"    {'endpoint':<52}{'n':>7}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
        "   refused by design",
    ]
    lines += [_endpoint_row(n, f) for n, f in endpoints.items() if f["kind"] == "app"]
    lines.append("    calls the clients made to Stripe themselves (not counted above):")
    lines += [_endpoint_row(n, f) for n, f in endpoints.items() if f["kind"] == "stripe"]
    windows = [n / 10 for n in load["requests_per_10s"][:-1]]  # the last one is partial
    if windows:
        lines.append(
            f"    req/s per 10 s of the run: min {min(windows):.1f}, max {max(windows):.1f}"
        )
    flows = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(load["flows"].items()))
    lines.append(f"    flows: {flows}")
    confirm = load["intent_confirmed_to_reservation_confirmed_ms"]
    if confirm.get("n"):
        lines.append(
            f"    PaymentIntent confirmed to reservation confirmed (webhook and worker, as the "
            f"client saw it polling each second): p50 {confirm['p50']:.0f} ms, "
            f"p99 {confirm['p99']:.0f} ms"
        )
    for name, figures in endpoints.items():
        for message, count in figures["error_samples"].items():
            lines.append(f"    error x{count} on {name}: {message[:160]}")
    settling = result["settling"]
    lines.append(
        f"    settled {settling['seconds']} s after the load: {_verdict(settling['settled'])}"
        f" ({settling['events_delivered_after_the_load']} events still delivered afterwards"
        + ("" if settling["settled"] else f"; left: {settling['left']}")
        + ")"
    )
    lines.append("    invariants:")
    for name, check in result["invariants"].items():
        lines.append(
            f"      {name.replace('_', ' ')}: {_verdict(check['passed'])} ({check['detail']})"
        )
        lines += [f"        {violation}" for violation in check["violations"][:5]]
    for what, rows in result.get("money", {}).items():
        seen = ", ".join(f"{k} {n} ({amount})" for k, (n, amount) in sorted(rows.items()))
        lines.append(f"    {what.replace('_', ' ')}: {seen or 'none'}")
    flags = ", ".join(f"{k} {n}" for k, n in sorted(result.get("finance_flags", {}).items()))
    lines.append(f"    finance flags raised: {flags or 'none'}")
    logged = ", ".join(f"{name} {log['errors']}" for name, log in result["logs"].items())
    lines.append(f"    errors logged: {logged} (logs in bench/results/load-logs/)")
    for name, log in result["logs"].items():
        if log["first"]:
            first = log["first"][0].splitlines()
            raised = first[-2:] if first[-1].startswith("DETAIL:") else first[-1:]
            lines.append(f"      first in {name}: {first[0][:150]}")
            lines += [f"        ... {line.strip()[:150]}" for line in raised]
    return lines


def report(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"Hyperblock benchmarks ({meta['mode']}), {meta['started_at']}, commit {meta['commit']}"
        f"{' + uncommitted changes' if meta['uncommitted_changes'] else ''}, "
        f"Python {meta['python']}, {meta['cpus']} CPUs",
    ]
    if "search" in results:
        lines += ["", "Offerings search (capacity.offerings.search)"]
        for db, result in results["search"].items():
            lines += search_report(db, result)
    if "throughput" in results:
        lines += ["", "Reservation throughput (capacity.services.reservation_create)"]
        lines += throughput_report(results["throughput"]["postgres"])
    if "webhooks" in results:
        lines += ["", "Webhook intake (POST /stripe/webhook/)"]
        lines += webhooks_report(results["webhooks"]["postgres"])
    if "api" in results:
        lines += ["", "REST API under gunicorn (2 workers)"]
        lines += api_report(results["api"]["postgres"])
    if "keys" in results:
        lines += ["", "API key authentication per request"]
        lines += keys_report(results["keys"]["postgres"])
    if "provisioning" in results:
        lines += ["", "From payment to active (webhook, worker, simulated data center)"]
        lines += provisioning_report(results["provisioning"]["postgres"])
    if "load" in results:
        lines += [
            "",
            "Mixed load: portal, API and webhooks against gunicorn (2 workers), a Celery worker "
            "and beat on Redis, localstripe",
        ]
        lines += load_report(results["load"]["postgres"])
    return "\n".join(lines)


def succeeded(results: dict) -> bool:
    """Every benchmark ran, neither the dataset nor the run oversold a node, and the load test
    saw no errors and kept its invariants."""
    for suite in SUITES:
        for result in results.get(suite, {}).values():
            if "error" in result:
                return False
            if suite == "webhooks" and not result["processed_exactly_once"]:
                return False
            if suite == "load" and not result["passed"]:
                return False
            if result.get("oversold") or result.get("dataset", {}).get("overlapping_live_pairs"):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("suite", nargs="?", choices=SUITES, help="run one suite (as --only)")
    parser.add_argument("--only", choices=SUITES, help="run one suite")
    parser.add_argument("--quick", action="store_true", help="smaller data, for a smoke run")
    parser.add_argument("--duration", type=int, help="load: seconds of load (300)")
    parser.add_argument("--users", type=int, help="load: simulated users (20)")
    args = parser.parse_args()
    if args.suite and args.only and args.suite != args.only:
        parser.error("name one suite")
    args.only = args.only or args.suite
    load_args: tuple[str, ...] = ()
    if args.duration is not None:
        load_args += ("--duration", str(args.duration))
    if args.users is not None:
        load_args += ("--users", str(args.users))
    results: dict = {"meta": metadata(quick=args.quick)}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hb-bench-results-") as scratch:
        for job in JOBS:
            if args.only in (None, job.suite):
                extra, timeout = (), JOB_TIMEOUT
                if job.suite == "load":  # its own length, plus setup and settling
                    extra, timeout = load_args, (args.duration or 300) + JOB_TIMEOUT
                result = run_job(
                    job, quick=args.quick, scratch=Path(scratch), extra=extra, timeout=timeout
                )
                results.setdefault(job.suite, {})[job.db] = result
    results["meta"]["seconds"] = round(time.perf_counter() - began, 1)
    RESULTS.mkdir(exist_ok=True)
    latest = RESULTS / "latest.json"
    latest.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("\n" + report(results), flush=True)
    print(f"\nTook {results['meta']['seconds']} s; JSON in {latest.relative_to(ROOT)}")
    sys.exit(0 if succeeded(results) else 1)


if __name__ == "__main__":
    main()
