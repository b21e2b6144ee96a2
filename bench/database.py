"""A fresh, throw-away database per benchmark process, with Django set up on it.

Each benchmark runs in its own process so Django reads its settings once, for one database:
a new SQLite file in a temporary folder, or a PostgreSQL database created for the run and
dropped afterwards. Migrations run first, so the schema (and PostgreSQL's exclusion
constraint) is exactly the app's.
"""

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

SETTINGS = "bench.settings"
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/hyperblock_bench"
DATABASES = ("sqlite", "postgres")


@dataclass(frozen=True)
class Database:
    kind: str  # "sqlite" or "postgres"
    url: str
    options: dict


def postgres_url() -> str:
    """BENCH_POSTGRES_URL overrides the local default (e.g. another port)."""
    return os.environ.get("BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def _maintenance_url(url: str) -> tuple[str, str]:
    """(URL of the server's `postgres` database, name of the benchmark database)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        raise SystemExit(f"No database name in {url!r}.")
    return urlunsplit(parts._replace(path="/postgres")), name


def _drop_postgres(url: str) -> None:
    admin_url, name = _maintenance_url(url)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        # FORCE: a crashed earlier run may have left sessions open on it.
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _create_postgres(url: str) -> None:
    _drop_postgres(url)  # leftovers of an interrupted run
    admin_url, name = _maintenance_url(url)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _setup_django(url: str) -> dict:
    # Both must be in place before django.setup(): the settings read them at import.
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    os.environ["DATABASE_URL"] = url
    import django  # only once the environment is set

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    return dict(settings.DATABASES["default"].get("OPTIONS", {}))


def _close_django_connections() -> None:
    from django.db import connections

    connections.close_all()


@contextmanager
def prepared(kind: str) -> Iterator[Database]:
    """Create the database, set Django up on it and migrate; remove it all afterwards."""
    if kind == "sqlite":
        folder = tempfile.mkdtemp(prefix="hb-bench-")
        url = f"sqlite:///{folder}/bench.sqlite3"  # folder is absolute: sqlite:////tmp/...
    elif kind == "postgres":
        folder = ""
        url = postgres_url()
        _create_postgres(url)
    else:
        raise SystemExit(f"Unknown database {kind!r}; choose one of {DATABASES}.")
    try:
        options = _setup_django(url)
        yield Database(kind=kind, url=url, options=options)
    finally:
        try:
            _close_django_connections()
        finally:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            elif not os.environ.get("BENCH_KEEP_DATABASE"):  # kept: to look into a failure
                _drop_postgres(url)


def progress(message: str) -> None:
    """Progress goes to stderr so the parent can show it while keeping results separate."""
    print(f"  · {message}", file=sys.stderr, flush=True)


def run_on_postgres(prog: str, quick_help: str, module: str) -> None:
    """The command line of a PostgreSQL-only benchmark: a fresh database, then
    `bench.<module>.run(db=..., quick=...)` (imported once Django is set up), its result as
    JSON to --out or the screen."""
    import argparse
    import importlib
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    with prepared("postgres") as db:
        runner = importlib.import_module(f"bench.{module}")
        result = {"database": "postgres", **runner.run(db=db, quick=args.quick)}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
