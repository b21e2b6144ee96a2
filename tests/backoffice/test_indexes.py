"""Back-office searches and filters are served by indexes, so change lists stay fast as the
tables grow. Checked on PostgreSQL, with sequential scans priced out: a plan that still reads a
whole table means no index can serve that search or filter.
"""

from datetime import UTC, datetime

import pytest
from django.contrib import admin
from django.db import connection, transaction
from django.db.models import BooleanField, DateTimeField, ForeignKey, QuerySet
from django.test import RequestFactory

from .conftest import make_staff

pytestmark = pytest.mark.postgres
OUR_APPS = {"core", "accounts", "capacity", "billing", "backoffice", "portal"}
SAMPLE = {BooleanField: True, DateTimeField: datetime(2027, 1, 1, tzinfo=UTC)}


@pytest.fixture(autouse=True)
def _postgres_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL (.ci/run always does)")


def ours() -> list[tuple[type, admin.ModelAdmin]]:
    return sorted(
        (
            (model, model_admin)
            for model, model_admin in admin.site._registry.items()
            if model._meta.app_label in OUR_APPS
        ),
        key=lambda pair: pair[0]._meta.label,
    )


def plan(queryset: QuerySet) -> str:
    sql, params = queryset.order_by().query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def table_scans(text: str) -> list[str]:
    """The scans in a plan that read a whole table or a whole index: a sequential scan, or an
    index scan with no index condition (walking the index only to filter every row)."""
    lines = [line.strip().removeprefix("-> ").strip() for line in text.splitlines()]
    whole = []
    for i, line in enumerate(lines):
        if "Seq Scan" in line:
            whole.append(line)
        elif "Index Scan" in line or "Index Only Scan" in line:
            details = []
            for following in lines[i + 1 :]:
                if "Scan" in following or following.startswith(("Hash", "Nested", "Sort")):
                    break
                details.append(following)
            if not any(d.startswith("Index Cond") for d in details):
                whole.append(line)
    return whole


def search_cases() -> list:
    return [
        pytest.param(model, model_admin, field, id=f"{model._meta.label_lower}:{field}")
        for model, model_admin in ours()
        for field in model_admin.get_search_fields(None)
    ]


@pytest.mark.parametrize(("model", "model_admin", "field"), search_cases())
def test_every_search_field_is_served_by_an_index(model, model_admin, field):
    request = RequestFactory().get("/admin/", {"q": "abc"})
    request.user = make_staff(superuser=True)
    original = model_admin.search_fields
    model_admin.search_fields = [field]
    try:
        queryset, _ = model_admin.get_search_results(request, model._default_manager.all(), "abc")
    finally:
        model_admin.search_fields = original
    assert table_scans(plan(queryset)) == []


def filter_cases() -> list:
    cases = []
    for model, model_admin in ours():
        for spec in model_admin.list_filter:
            name = spec[0] if isinstance(spec, tuple) else spec
            if not isinstance(name, str) or "__" in name:
                continue  # custom filters and joins: their own tests pin them
            if model._meta.get_field(name).many_to_many:
                continue  # read through the join table's own index
            cases.append(pytest.param(model, name, id=f"{model._meta.label_lower}:{name}"))
    return cases


@pytest.mark.parametrize(("model", "name"), filter_cases())
def test_every_field_filter_is_served_by_an_index(model, name):
    field = model._meta.get_field(name)
    if isinstance(field, ForeignKey):
        value = 1
        lookup = f"{name}_id"
    else:
        value = next((v for t, v in SAMPLE.items() if isinstance(field, t)), None)
        if value is None:
            value = field.choices[0][0] if field.choices else "x"
        lookup = name if not isinstance(field, DateTimeField) else f"{name}__gte"
    queryset = model._default_manager.filter(**{lookup: value})
    assert table_scans(plan(queryset)) == []
