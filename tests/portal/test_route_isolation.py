"""Every portal page and API endpoint, walked as a member of one organization (each role, and
with that organization's API key) against another organization's slug and ids: the answer is
404 and nothing in the database changes, password re-entered or not. Our own pages never show
anything of theirs, and our key lists only ours. Routes without a tenant are listed as well,
each with why it has none and exactly what it answers a signed-in member.

ROUTES is checked against the URL resolver: a route it does not list fails the walk, and so
does an entry whose route is gone or changed. The back office (/admin/) has its own matrix in
tests/backoffice."""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import cache
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
import time_machine
from django.apps import apps
from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.contrib.messages import get_messages
from django.db import connection, transaction
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import URLResolver, get_resolver, reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts import api_keys, tokens
from accounts.models import ApiKey, Invitation, Membership, Organization, User
from accounts.permissions import Permission, Role, can
from accounts.services.memberships import invitation_create
from billing import gateway
from billing.models import BillingAccount, Invoice, ModelPrice, Payment, Refund, UsageHour
from billing.services import accounts
from capacity.models import (
    Cluster,
    Extension,
    GpuModel,
    ListPrice,
    NegotiatedRate,
    Node,
    Region,
    Reservation,
)
from core import crypto
from tests.billing.conftest import SECRET_KEY, card, localstripe_url  # noqa: F401
from tests.capacity.conftest import NEXT_HOUR, NOW, hours
from tests.capacity.test_reservations import reserve
from tests.conftest import client_for, member_of
from tests.factories import PASSWORD, MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

P = Permission
MODEL = "llama-3-70b"
PROBE = "PROPFIND"  # a method no view accepts: its 405 names the ones each view does


# --- The two organizations --------------------------------------------------------------------
@dataclass
class Tenant:
    """One organization's objects, each in the state in which acting on it would succeed."""

    org: Organization
    owner: User
    member: Membership  # not an owner: a role change or removal would go through
    key: ApiKey
    raw_key: str
    quote: Reservation  # held, an open quote: payable, acceptable, cancelable
    active: Reservation  # running with a kubeconfig to download; extendable
    extension: Extension  # of `active`, held while it is paid for
    payment: Payment  # succeeded, so it has a receipt
    refund: Refund
    invoice: Invoice
    invitation: Invitation
    invitation_token: str
    card: str  # a Stripe card on the organization's customer
    setup_intent: str  # a card being added to it


@dataclass
class World:
    mine: Tenant
    theirs: Tenant
    roles: dict[str, User]  # our members, one per role
    sessions: dict[tuple[str, bool], str]  # (role, password just re-entered): session key
    verify_token: str  # their owner's e-mail verification link
    reset_uid: str  # their owner's password-reset link
    reset_token: str

    def words(self) -> dict[str, str]:
        """Values answers are written with: `{mine}` is our slug, and so on."""
        return {
            "mine": self.mine.org.slug,
            "theirs": self.theirs.org.slug,
            "their_owner": self.theirs.owner.email,
            "their_invitee": self.theirs.invitation.email,
            "their_invitation": self.theirs.invitation_token,
            "reset_uid": self.reset_uid,
        }

    def identifiers(self) -> dict[str, str]:
        """What identifies their organization's data; no answer shows one unless it says so."""
        theirs = self.theirs
        return {
            "slug": theirs.org.slug,
            "name": theirs.org.name,
            "owner": theirs.owner.email,
            "member": theirs.member.user.email,
            "invitee": theirs.invitation.email,
            "key": theirs.key.public_id,
            "quote": theirs.quote.public_id,
            "active": theirs.active.public_id,
            "extension": theirs.extension.public_id,
            "payment": theirs.payment.public_id,
            "refund": theirs.refund.public_id,
            "invoice": theirs.invoice.number,
            "card": theirs.card,
            "setup_intent": theirs.setup_intent,
        }


def _tenant(org: Organization, owner: User, catalog, number: int, api: str) -> Tenant:
    member = MembershipFactory(
        organization=org, role=Role.MEMBER, user__email=f"member@{org.slug}.example"
    )
    key, raw_key = api_keys.api_key_create(
        organization=org, actor=owner, name="everything", scopes=sorted(ApiKey.Scope.values)
    )
    # Used just now: using it again within the minute writes nothing.
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=NOW)
    quote = reserve(org, owner, catalog, nodes=1)
    Reservation.objects.filter(pk=quote.pk).update(price_source="quote")
    active = reserve(org, owner, catalog, nodes=1, start=NEXT_HOUR + hours(48))
    Reservation.objects.filter(pk=active.pk).update(
        state=Reservation.State.ACTIVE,
        hold_expires_at=None,
        access_secret=crypto.encrypt("apiVersion: v1\nkind: Config\n"),
    )
    active.refresh_from_db()
    extension = Extension.objects.create(
        reservation=active,
        hours=1,
        starts_at=active.ends_at,
        ends_at=active.ends_at + hours(1),
        hold_expires_at=NOW + timedelta(minutes=15),
        currency=active.currency,
        subtotal=Decimal("16.00"),
        discount=Decimal("0.00"),
        price=Decimal("16.00"),
        requested_by=owner,
    )
    payment = Payment.objects.create(
        organization=org,
        reservation=active,
        attempt_token="seed",
        amount=active.total,
        currency=active.currency,
        status=Payment.Status.SUCCEEDED,
        stripe_payment_intent_id=f"pi_seed{number}",
        succeeded_at=NOW,
    )
    refund = Refund.objects.create(
        payment=payment,
        amount=Decimal("1.00"),
        currency=active.currency,
        reason="Goodwill",
        status=Refund.Status.SUCCEEDED,
    )
    invoice = Invoice.objects.create(
        organization=org,
        reservation=active,
        number=f"INV-000{number}",
        amount=active.total,
        currency=active.currency,
        status=Invoice.Status.OPEN,
    )
    UsageHour.objects.create(
        organization=org,
        model=MODEL,
        hour=NOW.replace(minute=0) - timedelta(days=1),
        input_tokens=1000 * number,
        output_tokens=2000 * number,
        cost=Decimal("0.42") * number,
    )
    invitation, invitation_token = invitation_create(
        organization=org, actor=owner, email=f"invitee{number}@example.com", role=Role.MEMBER
    )
    account = accounts.billing_account_ensure(org)
    payment_method = card(api)
    gateway.payment_method_attach(
        payment_method_id=payment_method,
        customer_id=account.stripe_customer_id,
        idempotency_key=f"attach:{payment_method}",
    )
    BillingAccount.objects.filter(pk=account.pk).update(default_payment_method_id=payment_method)
    setup = gateway.setup_intent_create(
        customer_id=account.stripe_customer_id, metadata={}, idempotency_key=None
    )
    return Tenant(
        org=org,
        owner=owner,
        member=member,
        key=key,
        raw_key=raw_key,
        quote=quote,
        active=active,
        extension=extension,
        payment=payment,
        refund=refund,
        invoice=invoice,
        invitation=invitation,
        invitation_token=invitation_token,
        card=payment_method,
        setup_intent=setup.id,
    )


def _catalog() -> SimpleNamespace:
    """H100 nodes at $2.00 per GPU-hour in us-east."""
    h100 = GpuModel.objects.create(slug="h100", name="H100", memory_gb=80)
    east = Region.objects.create(code="us-east", name="US East")
    ListPrice.objects.create(gpu_model=h100, region=east, price_per_gpu_hour=Decimal("2.00"))
    cluster = Cluster.objects.create(code="east-a", region=east, gpu_model=h100)
    Node.objects.bulk_create(Node(cluster=cluster, hostname=f"east-a-n{i:02d}") for i in range(8))
    return SimpleNamespace(h100=h100, east=east)


def _build(api: str) -> World:
    """Our organization with a member of each role, and theirs; both with the same kinds of
    objects, so our lists are exact and their objects are real and actionable."""
    catalog = _catalog()
    mine = OrganizationFactory()
    theirs = OrganizationFactory(name="Other Co", slug="other-co")
    ModelPrice.objects.create(
        model=MODEL, input_per_million=Decimal("1.00"), output_per_million=Decimal("2.00")
    )
    # Their negotiated price must never price our searches.
    NegotiatedRate.objects.create(
        organization=theirs,
        gpu_model=catalog.h100,
        region=catalog.east,
        price_per_gpu_hour=Decimal("1.00"),
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=60),
    )
    roles = {role: member_of(mine, role) for role in Role.values}
    sessions = {}
    for role, user in roles.items():
        for reauthenticated in (False, True):
            client = client_for(user, reauthenticated=reauthenticated)
            session = client.session
            session["organization"] = theirs.slug  # as if theirs were the last one visited
            session.save()
            sessions[role, reauthenticated] = session.session_key
    their_owner = MembershipFactory(
        organization=theirs, role=Role.OWNER, user__email="owner@other-co.example"
    ).user
    return World(
        mine=_tenant(mine, roles[Role.OWNER], catalog, 1, api),
        theirs=_tenant(theirs, their_owner, catalog, 2, api),
        roles=roles,
        sessions=sessions,
        verify_token=tokens.email_verification_token(their_owner),
        reset_uid=urlsafe_base64_encode(force_bytes(their_owner.pk)),
        reset_token=default_token_generator.make_token(their_owner),
    )


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, localstripe_url) -> Iterator[World]:
    """Built once, inside a transaction rolled back when the module is done; each test runs in
    a savepoint of it that undoes whatever the test changed."""
    stripe = {
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_PUBLISHABLE_KEY": "pk_test_hyperblock_tests",
        "STRIPE_API_BASE": localstripe_url,
        "STRIPE_MAX_NETWORK_RETRIES": 0,
    }
    with (
        django_db_blocker.unblock(),
        time_machine.travel(NOW, tick=False),
        override_settings(**stripe),
        transaction.atomic(),
    ):
        yield _build(localstripe_url)
        transaction.set_rollback(True)


# --- What a route answers ---------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    status: int
    location: str = ""  # `{mine}` and the other World.words() are filled in
    message: str = ""  # the one message flashed with the answer
    error: str = ""  # API: the error type of the JSON body
    json: Callable[[World], object] | None = None  # the exact JSON body
    listed: Callable[[World], list[str]] | None = None  # API lists: exactly these rows
    key: str = "id"  # the field that identifies a listed row
    contains: str = ""  # a text the page must show
    reveals: tuple[str, ...] = ()  # which of their identifiers the answer shows, by design
    ours_change: bool = False  # a write that lands on our organization (only ours)


NOT_FOUND = Answer(404)
API_NOT_FOUND = Answer(404, error="not_found")
FORBIDDEN = Answer(403)
# OPTIONS on an endpoint without a GET: no scope covers it, so no key may use it.
KEY_UNSCOPED = Answer(403, error="permission_denied")
OK = Answer(200)
HOME = Answer(302, "/")

Args = Callable[[World], dict]
# The ids of one organization's objects a path names; a route whose path also names an
# action gives one set per action.
Ids = Callable[[Tenant], dict[str, str] | list[dict[str, str]]]


def _none(world: World) -> dict:
    return {}


@dataclass(frozen=True)
class Portal:
    """A page under /o/<slug>/. Their slug is 404 for each of our roles and every method, with
    or without their ids. Our slug with their ids (`ids` in the path, `their_data` in a POSTed
    form) answers `guessed` to a role that has `permission`, and 403 to one without it
    (decided before any id is looked up)."""

    route: str
    methods: str
    permission: Permission
    ids: Ids | None = None
    data: dict = field(default_factory=dict)  # a form that would succeed for the caller's own
    their_data: Callable[[Tenant], dict] | None = None
    guessed: Answer = NOT_FOUND

    @property
    def guessable(self) -> bool:
        return self.ids is not None or self.their_data is not None

    def guessed_with(self, world: World) -> tuple[list[str], dict]:
        """The methods and form a guess is sent with: an id in the form travels by POST."""
        if self.their_data is None:
            return self.methods.split(), self.data
        return ["POST"], {**self.data, **self.their_data(world.theirs)}


@dataclass(frozen=True)
class Api:
    """An API endpoint. Our key (every scope) with their ids, or naming their organization
    as `org`, answers `key`; a portal session naming their organization (or ours, with their
    ids) answers `session`: 404 not_found unless said otherwise."""

    route: str
    key: dict[str, Answer]
    ids: Ids | None = None
    params: Args = _none  # query (GET) or JSON body (POST) besides `org`
    session: dict[str, Answer] = field(default_factory=dict)
    why: str = ""  # for an endpoint that names no organization

    @property
    def methods(self) -> str:
        return " ".join(self.key)

    def session_answer(self, method: str) -> Answer:
        if method in self.session:
            return self.session[method]
        # OPTIONS describes the endpoint and looks nothing up; HEAD has no body to read.
        return {"OPTIONS": OK, "HEAD": Answer(404)}.get(method, API_NOT_FOUND)


@dataclass(frozen=True)
class Untenanted:
    """A route that names no organization: what it answers each of our members (with their
    tokens where it takes one), and why it has no tenant."""

    route: str
    why: str
    answers: dict[str, Answer]
    args: Args = _none
    params: Args = _none  # query (GET) or form (POST)

    @property
    def methods(self) -> str:
        return " ".join(self.answers)


Entry = Portal | Api | Untenanted


def _quote(tenant: Tenant) -> dict[str, str]:
    return {"public_id": tenant.quote.public_id}


def _active(tenant: Tenant) -> dict[str, str]:
    return {"public_id": tenant.active.public_id}


def _extension(tenant: Tenant) -> dict[str, str]:
    return {"public_id": tenant.active.public_id, "extension_id": tenant.extension.public_id}


def _payment(tenant: Tenant) -> dict[str, str]:
    return {"payment_id": tenant.payment.public_id}


def _card(tenant: Tenant) -> dict[str, str]:
    return {"payment_method_id": tenant.card}


def _membership(tenant: Tenant) -> dict[str, str]:
    return {"membership_id": str(tenant.member.pk)}


def _key_actions(tenant: Tenant) -> list[dict[str, str]]:
    return [{"public_id": tenant.key.public_id, "action": a} for a in ("revoke", "rotate")]


SEARCH = {
    "gpu_model": "h100",
    "region": "us-east",
    "node_count": "1",
    "duration_hours": "1",
    "starts_at": NEXT_HOUR.strftime("%Y-%m-%dT%H:%M:%SZ"),
}


def _search(world: World) -> dict[str, str]:
    return SEARCH


def _ids(rows: Callable[[Tenant], list[str]]) -> Callable[[World], list[str]]:
    return lambda world: rows(world.mine)


MINE_ONLY = "lists our organization's rows only, whatever `org` names"
CATALOG = "the catalog with list prices: the same for every organization, whatever `org` names"
GET = {"GET": OK, "HEAD": OK, "OPTIONS": OK}
DJANGO_FORM = ("GET", "HEAD", "POST", "PUT", "OPTIONS")

ROUTES: dict[str, Entry] = {
    # --- Organization pages -------------------------------------------------------------------
    "dashboard": Portal("o/<slug:slug>/", "GET", P.VIEW_ORGANIZATION),
    "organization-settings": Portal(
        "o/<slug:slug>/settings/",
        "GET POST",
        P.VIEW_ORGANIZATION,
        data={"name": "Taken over", "country": "DE", "billing_email": "x@example.com"},
    ),
    "team": Portal("o/<slug:slug>/team/", "GET", P.VIEW_TEAM),
    "team-invite": Portal(
        "o/<slug:slug>/team/invite/",
        "POST",
        P.MANAGE_TEAM,
        data={"email": "intruder@example.com", "role": Role.OWNER},
    ),
    "invitation-revoke": Portal(
        "o/<slug:slug>/team/invitations/<int:invitation_id>/revoke/",
        "POST",
        P.MANAGE_TEAM,
        ids=lambda t: {"invitation_id": str(t.invitation.pk)},
        # No password is asked here; their id gets what one of our invitations gets once it
        # is used or withdrawn, and nothing of theirs is read.
        guessed=Answer(
            302, "/o/{mine}/team/", message="This invitation was already used or withdrawn."
        ),
    ),
    "member-role": Portal(
        "o/<slug:slug>/team/<int:membership_id>/role/",
        "POST",
        P.MANAGE_TEAM,
        ids=_membership,
        data={"role": Role.ADMIN},
    ),
    "member-remove": Portal(
        "o/<slug:slug>/team/<int:membership_id>/remove/",
        "POST",
        P.VIEW_TEAM,
        ids=_membership,
    ),
    "api-keys": Portal(
        "o/<slug:slug>/api-keys/",
        "GET POST",
        P.VIEW_ORGANIZATION,
        data={"name": "intruder", "scopes": ["inference"]},
    ),
    "api-key-action": Portal(
        "o/<slug:slug>/api-keys/<str:public_id>/<str:action>/",
        "POST",
        P.MANAGE_API_KEYS,
        ids=_key_actions,
    ),
    # --- Capacity and reservations ------------------------------------------------------------
    "capacity-search": Portal("o/<slug:slug>/capacity/", "GET", P.VIEW_RESERVATIONS),
    "capacity-calendar": Portal("o/<slug:slug>/capacity/calendar/", "GET", P.VIEW_RESERVATIONS),
    "reservation-list": Portal("o/<slug:slug>/reservations/", "GET", P.VIEW_RESERVATIONS),
    "reservation-new": Portal(
        "o/<slug:slug>/reservations/new/",
        "GET POST",
        P.VIEW_RESERVATIONS,
        data={**SEARCH, "request_token": "route-isolation"},
    ),
    "reservation-detail": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/", "GET", P.VIEW_RESERVATIONS, ids=_quote
    ),
    "reservation-status": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/status/",
        "GET",
        P.VIEW_RESERVATIONS,
        ids=_quote,
    ),
    "reservation-kubeconfig": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/kubeconfig/",
        "GET",
        P.USE_HARDWARE,
        ids=_active,
    ),
    "reservation-cancel": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/cancel/",
        "GET POST",
        P.MANAGE_RESERVATIONS,
        ids=_quote,
        data={"reason": "intruder"},
    ),
    "reservation-extend": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/extend/",
        "GET POST",
        P.MANAGE_RESERVATIONS,
        ids=_active,
        data={"hours": "1"},
    ),
    "reservation-quote-accept": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/accept/",
        "POST",
        P.MANAGE_RESERVATIONS,
        ids=_quote,
    ),
    # --- Paying and billing -------------------------------------------------------------------
    "pay": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/pay/", "GET", P.VIEW_RESERVATIONS, ids=_quote
    ),
    "pay-card": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/pay/card/",
        "POST",
        P.VIEW_RESERVATIONS,
        ids=_quote,
        data={"payment_method": "pm_card_visa", "attempt": "route-isolation"},
        guessed=Answer(404, json=lambda w: {"error": "No such reservation."}),
    ),
    "pay-saved": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/pay/saved/",
        "POST",
        P.VIEW_RESERVATIONS,
        ids=_quote,
        data={"attempt": "route-isolation"},
    ),
    "extension-pay": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/extensions/<str:extension_id>/pay/",
        "GET",
        P.VIEW_RESERVATIONS,
        ids=_extension,
    ),
    "extension-pay-card": Portal(
        "o/<slug:slug>/reservations/<str:public_id>/extensions/<str:extension_id>/pay/card/",
        "POST",
        P.VIEW_RESERVATIONS,
        ids=_extension,
        data={"payment_method": "pm_card_visa", "attempt": "route-isolation"},
        guessed=Answer(404, json=lambda w: {"error": "No such extension."}),
    ),
    "payment-status": Portal(
        "o/<slug:slug>/payments/<str:payment_id>/status/",
        "GET",
        P.VIEW_RESERVATIONS,
        ids=_payment,
    ),
    "receipt": Portal(
        "o/<slug:slug>/billing/receipts/<str:payment_id>/", "GET", P.VIEW_BILLING, ids=_payment
    ),
    "billing": Portal("o/<slug:slug>/billing/", "GET", P.VIEW_BILLING),
    "usage": Portal("o/<slug:slug>/usage/", "GET", P.VIEW_USAGE),
    "card-add": Portal(
        "o/<slug:slug>/billing/cards/new/",
        "GET POST",
        P.MANAGE_BILLING,
        data={"setup_intent": "seti_route_isolation"},
        # Their card set-up, finished under our slug: Stripe names its customer, not ours.
        their_data=lambda t: {"setup_intent": t.setup_intent},
        guessed=Answer(302, "/o/{mine}/billing/", message="No such card setup."),
    ),
    "card-default": Portal(
        "o/<slug:slug>/billing/cards/<str:payment_method_id>/default/",
        "POST",
        P.MANAGE_BILLING,
        ids=_card,
    ),
    "card-remove": Portal(
        "o/<slug:slug>/billing/cards/<str:payment_method_id>/remove/",
        "POST",
        P.MANAGE_BILLING,
        ids=_card,
    ),
    # --- API ----------------------------------------------------------------------------------
    "api-gpu-models": Api(
        "api/v1/gpu-models/",
        {"GET": Answer(200, json=lambda w: GPU_MODELS), "HEAD": OK, "OPTIONS": OK},
        session={"GET": Answer(200, json=lambda w: GPU_MODELS), "HEAD": OK},
        why=CATALOG,
    ),
    "api-regions": Api(
        "api/v1/regions/",
        {"GET": Answer(200, json=lambda w: REGIONS), "HEAD": OK, "OPTIONS": OK},
        session={"GET": Answer(200, json=lambda w: REGIONS), "HEAD": OK},
        why=CATALOG,
    ),
    "api-offerings": Api(
        "api/v1/offerings/",
        {
            "GET": Answer(200, json=lambda w: OFFERING),
            "HEAD": OK,
            "OPTIONS": OK,
        },
        params=_search,
        why="prices with the caller's organization's rates, whatever `org` names",
    ),
    "api-reservations": Api(
        "api/v1/reservations/",
        {
            "GET": Answer(200, listed=_ids(lambda t: [t.quote.public_id, t.active.public_id])),
            "HEAD": OK,
            # The key's organization wins over `org`: the block is ours.
            "POST": Answer(201, ours_change=True),
            "OPTIONS": OK,
        },
        params=_search,
        why=MINE_ONLY,
    ),
    "api-reservation": Api(
        "api/v1/reservations/<str:public_id>/",
        {"GET": API_NOT_FOUND, "HEAD": Answer(404), "OPTIONS": OK},
        ids=_quote,
    ),
    "api-cancel": Api(
        "api/v1/reservations/<str:public_id>/cancel/",
        {"POST": API_NOT_FOUND, "OPTIONS": KEY_UNSCOPED},
        ids=_quote,
        params=lambda w: {"reason": "intruder"},
    ),
    "api-extend": Api(
        "api/v1/reservations/<str:public_id>/extend/",
        {"GET": API_NOT_FOUND, "HEAD": Answer(404), "POST": API_NOT_FOUND, "OPTIONS": OK},
        ids=_active,
        params=lambda w: {"hours": 1},
    ),
    "api-pay": Api(
        "api/v1/reservations/<str:public_id>/pay/",
        {"POST": API_NOT_FOUND, "OPTIONS": KEY_UNSCOPED},
        ids=_quote,
        params=lambda w: {"client_token": "route-isolation", "use_saved_card": True},
    ),
    "api-usage": Api(
        "api/v1/usage/",
        {
            "GET": Answer(200, json=lambda w: USAGE),
            "HEAD": OK,
            # Reporting for their key is refused; nothing is stored for anyone.
            "POST": Answer(
                207,
                json=lambda w: {
                    "accepted": 0,
                    "duplicates": 0,
                    "errors": [
                        {
                            "index": 0,
                            "param": "events[0].key",
                            "code": "unknown_key",
                            "message": "unknown key",
                        }
                    ],
                },
            ),
            "OPTIONS": OK,
        },
        params=lambda w: {
            "events": [
                {
                    "id": "route-isolation-1",
                    "key": w.theirs.key.public_id,
                    "model": MODEL,
                    "input_tokens": 10,
                    "output_tokens": 10,
                    "time": NOW.isoformat(),
                }
            ]
        },
        session={"POST": Answer(400, error="invalid_request")},  # usage comes with a key only
        why="GET: " + MINE_ONLY + "; POST: reports for the key's own organization only",
    ),
    "api-payments": Api(
        "api/v1/payments/",
        {
            "GET": Answer(200, listed=_ids(lambda t: [t.payment.public_id])),
            "HEAD": OK,
            "OPTIONS": OK,
        },
        why=MINE_ONLY,
    ),
    "api-refunds": Api(
        "api/v1/refunds/",
        {
            "GET": Answer(200, listed=_ids(lambda t: [t.refund.public_id])),
            "HEAD": OK,
            "OPTIONS": OK,
        },
        why=MINE_ONLY,
    ),
    "api-invoices": Api(
        "api/v1/invoices/",
        {
            "GET": Answer(200, listed=_ids(lambda t: [t.invoice.number]), key="number"),
            "HEAD": OK,
            "OPTIONS": OK,
        },
        why=MINE_ONLY,
    ),
    "api-keys-list": Api(
        "api/v1/keys/",
        {"GET": Answer(200, listed=_ids(lambda t: [t.key.public_id])), "HEAD": OK, "OPTIONS": OK},
        why=MINE_ONLY,
    ),
    "api-keys-verify": Api(
        "api/v1/keys/verify/",
        {"POST": Answer(403, error="permission_denied"), "OPTIONS": KEY_UNSCOPED},
        params=lambda w: {"key": w.theirs.key.public_id},
        session={"POST": Answer(403, error="permission_denied")},
        why=(
            "for the model gateway only: a customer's key or session is refused (403 "
            "not_platform) before the key sent in the body is looked at"
        ),
    ),
    "api-key-revoke": Api(
        "api/v1/keys/<str:public_id>/revoke/",
        {"POST": API_NOT_FOUND, "OPTIONS": KEY_UNSCOPED},
        ids=lambda t: {"public_id": t.key.public_id},
    ),
    "api-schema": Untenanted(
        "api/v1/schema/", "the OpenAPI document: the same for everyone, no data", GET
    ),
    "api-docs": Untenanted(
        "api/v1/docs/",
        "the page that renders the OpenAPI document",
        {"GET": OK, "HEAD": OK},
    ),
    # --- No tenant: signing up and in, the caller's own account, health, webhooks ---------------
    "home": Untenanted(
        "",
        "the public front page (the catalog's list prices, for anyone signed out); a "
        "signed-in person is sent to one of their own organizations, and the last one "
        "visited (their slug here) counts only if they are a member of it",
        {"GET": Answer(302, "/o/{mine}/")},
    ),
    "healthz": Untenanted(
        "healthz", "liveness for the load balancer", {"GET": Answer(200, json=lambda w: ALIVE)}
    ),
    "readyz": Untenanted(
        "readyz", "readiness for the load balancer", {"GET": Answer(200, json=lambda w: READY)}
    ),
    "metrics": Untenanted(
        "metrics",
        "operations' scrape of platform-wide figures, for loopback or the scrape token only; "
        "a customer's request is answered as if there were nothing there",
        {"GET": NOT_FOUND},
    ),
    "stripe-webhook": Untenanted(
        "stripe/webhook/",
        "Stripe's calls, authenticated by its signature, not by a tenant",
        {"POST": Answer(400, json=lambda w: {"error": "Missing Stripe-Signature header."})},
        params=lambda w: {"type": "payment_intent.succeeded", "object": "pi_seed2"},
    ),
    "signup": Untenanted(
        "signup/",
        "creates a new organization; a signed-in person is sent home",
        {"GET": HOME, "POST": HOME},
        params=lambda w: {"organization_slug": w.theirs.org.slug, "email": "x@example.com"},
    ),
    "signup-sent": Untenanted(
        "signup/sent/",
        "says to look in the inbox of the address a sign-up typed, whether or not it had an "
        "account; it shows only what this browser typed",
        {"GET": OK},
    ),
    "signup-slug": Untenanted(
        "signup/slug/",
        "says whether an address is free while signing up; that one is taken is public",
        {"GET": Answer(200, contains="This address is taken; choose another.", reveals=("slug",))},
        params=lambda w: {"organization_slug": w.theirs.org.slug},
    ),
    "login": Untenanted(
        "login/",
        "signs in; a signed-in person is sent home, whatever credentials are sent",
        dict.fromkeys(DJANGO_FORM, HOME),
        params=lambda w: {"username": w.theirs.owner.email, "password": PASSWORD},
    ),
    "logout": Untenanted(
        "logout/",
        "signs the caller out",
        {"POST": Answer(302, "/login/"), "OPTIONS": OK},
    ),
    "verify-email-resend": Untenanted(
        "verify/resend/",
        "mails the caller's own verification link",
        {"POST": Answer(302, "/", message="Your e-mail address is already verified.")},
    ),
    "verify-email": Untenanted(
        "verify/<str:token>/",
        "the link is the credential: it verifies the address it was mailed to, nothing else",
        {"GET": Answer(302, "/", message="Thank you: {their_owner} is verified.")},
        args=lambda w: {"token": w.verify_token},
    ),
    "password-reset": Untenanted(
        "password/reset/",
        "mails a reset link to the address given; the answer is the same for any address",
        {
            "GET": OK,
            "HEAD": OK,
            "POST": Answer(302, "/password/reset/sent/"),
            "PUT": OK,  # a PUT has no form data: the empty form again
            "OPTIONS": OK,
        },
        params=lambda w: {"email": w.theirs.owner.email},
    ),
    "password-reset-done": Untenanted("password/reset/sent/", "says the link is on its way", GET),
    "password_reset_confirm": Untenanted(
        "password/reset/<uidb64>/<token>/",
        "the link is the credential; it only moves the token out of the URL",
        dict.fromkeys(DJANGO_FORM, Answer(302, "/password/reset/{reset_uid}/set-password/")),
        args=lambda w: {"uidb64": w.reset_uid, "token": w.reset_token},
        params=lambda w: {"new_password1": "Taken-over-123", "new_password2": "Taken-over-123"},
    ),
    "profile": Untenanted(
        "account/",
        "the caller's own account and memberships",
        {"GET": OK, "POST": OK},
    ),
    "confirm-password": Untenanted(
        "account/confirm-password/",
        "the caller re-enters their own password",
        {"GET": OK, "POST": Answer(400, contains="That password is not right.")},
        params=lambda w: {"password": "not-the-password", "next": "/"},
    ),
    "invitation": Untenanted(
        "invitations/<str:token>/",
        "the link is the credential; it joins only the person it was sent to",
        {
            "GET": Answer(200, reveals=("name", "invitee")),
            "POST": Answer(
                302,
                "/invitations/{their_invitation}/",
                message=(
                    "This invitation is for {their_invitee}. "
                    "Sign in with that address to accept it."
                ),
            ),
        },
        args=lambda w: {"token": w.theirs.invitation_token},
    ),
    "organization-create": Untenanted(
        "organizations/new/",
        "creates a new organization of the caller's; their address is taken",
        {
            "GET": OK,
            "POST": Answer(
                200, contains="This address is taken; choose another.", reveals=("slug",)
            ),
        },
        params=lambda w: {
            "name": "Copycat",
            "slug": w.theirs.org.slug,
            "country": "DE",
            "billing_email": "x@example.com",
        },
    ),
}

# Our list price, $2.00 per GPU-hour for 8 GPUs; their negotiated $1.00 would make it 8.00.
OFFERING = [
    {
        "kind": "exact",
        "gpu_model": "h100",
        "region": "us-east",
        "node_count": 1,
        "starts_at": "2026-12-01T10:00:00Z",
        "ends_at": "2026-12-01T11:00:00Z",
        "duration_hours": 1,
        "starts_on_payment": False,
        "available_nodes": 6,  # of 8: both organizations hold one from 10:00
        "price": "16.00",
        "currency": "usd",
    }
]
USAGE = {
    "days": [
        {
            "date": (NOW - timedelta(days=1)).date().isoformat(),
            "model": MODEL,
            "input_tokens": 1000,
            "output_tokens": 2000,
            "cost": "0.42",
        }
    ]
}
GPU_MODELS = [
    {
        "slug": "h100",
        "name": "H100",
        "description": "",
        "gpus_per_node": 8,
        "gpu_memory_gb": 80,
        "regions": [{"region": "us-east", "price_per_gpu_hour": "2.00", "currency": "usd"}],
    }
]
REGIONS = [{"code": "us-east", "name": "US East", "location": "", "gpu_models": ["h100"]}]
ALIVE = {"status": "ok"}
READY = {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


# --- Walking ----------------------------------------------------------------------------------
# The staff back office: tests/backoffice walks it with the staff roles.
EXCLUDED = ("admin/",)


def _excluded() -> tuple[str, ...]:
    prefixes = list(EXCLUDED)
    for url in (settings.STATIC_URL, settings.MEDIA_URL):
        if url and url.startswith("/") and url != "/":
            prefixes.append(url.lstrip("/"))
    return tuple(prefixes)


def _resolved() -> list[tuple[str, str, Callable]]:
    """(name, route, view) of every URL pattern the root resolver serves, includes followed."""
    found: list[tuple[str, str, Callable]] = []
    excluded = _excluded()

    def walk(patterns: list, prefix: str, namespace: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if route.startswith(excluded):
                continue
            if isinstance(pattern, URLResolver):
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                walk(pattern.url_patterns, route, inner)
            else:
                name = f"{namespace}{pattern.name}" if pattern.name else route
                found.append((name, route, pattern.callback))

    walk(get_resolver().url_patterns, "", "")
    return found


def _variants(entry: Entry, world: World, tenant: Tenant) -> list[dict[str, str]]:
    """The path arguments: `tenant`'s ids, or for a route without a tenant its own."""
    if isinstance(entry, Untenanted):
        return [entry.args(world)]
    ids = entry.ids(tenant) if entry.ids is not None else {}
    return ids if isinstance(ids, list) else [ids]


# Customers reach the portal from the internet, never from the servers' loopback.
CUSTOMER_ADDRESS = "203.0.113.7"


def _client(world: World, role: str, *, reauthenticated: bool = False) -> Client:
    """One of our members, signed in (their organization is the last one they visited)."""
    client = Client(REMOTE_ADDR=CUSTOMER_ADDRESS)
    client.cookies[settings.SESSION_COOKIE_NAME] = world.sessions[role, reauthenticated]
    return client


def _send(client: Client, method: str, path: str, params: dict, *, api: bool = False):
    client.cookies.pop("messages", None)  # each answer's messages are its own
    if method in ("GET", "HEAD"):
        return client.generic(method, path, QUERY_STRING=urlencode(params, doseq=True))
    if method == "OPTIONS":
        return client.options(path)
    if api:
        return client.generic(method, path, json.dumps(params), "application/json")
    return client.generic(
        method, path, urlencode(params, doseq=True), "application/x-www-form-urlencoded"
    )


def _check(response: HttpResponse, answer: Answer, world: World, where: tuple) -> None:
    words = world.words()
    content = response.content.decode(errors="replace")
    location = response.get("Location", "")
    assert response.status_code == answer.status, (where, response.status_code, content[:600])
    assert location == answer.location.format(**words), where
    messages = [str(message) for message in get_messages(response.wsgi_request)]
    assert messages == ([answer.message.format(**words)] if answer.message else []), where
    if answer.error:
        assert response.json()["error"]["type"] == answer.error, (where, content)
    if answer.json is not None:
        assert response.json() == answer.json(world), where
    if answer.listed is not None:
        shown = sorted(row[answer.key] for row in response.json()["results"])
        assert shown == sorted(answer.listed(world)), where
    if answer.contains:
        assert answer.contains in content, where
    shown = [
        label
        for label, value in world.identifiers().items()
        if label not in answer.reveals and (value in content or value in location)
    ]
    assert shown == [], (where, "shows another organization's data", content[:600])


# --- What must not change ---------------------------------------------------------------------
# The organization a row belongs to, for the models that reach it through another row.
OWNER_PATHS = {
    "accounts.organization": "pk",
    "capacity.allocation": "reservation__organization_id",
    "capacity.incident": "reservation__organization_id",
    "billing.refund": "payment__organization_id",
}
IGNORED_FIELDS = {"last_login"}  # signing in writes it


def _models() -> list:
    return [
        model
        for label in ("core", "accounts", "capacity", "billing")
        for model in apps.get_app_config(label).get_models()
    ]


def _owner(model) -> str | None:
    names = {f.name for f in model._meta.concrete_fields}
    return OWNER_PATHS.get(model._meta.label_lower) or (
        "organization_id" if "organization" in names else None
    )


@cache
def _statements() -> list[tuple[str, bool, str, tuple]]:
    """One query per model, compiled once and run as plain SQL: fast enough to take after
    every request. Each row leads with the organization it belongs to."""
    statements = []
    for model in _models():
        owner = _owner(model)
        fields = [f.attname for f in model._meta.concrete_fields if f.name not in IGNORED_FIELDS]
        query = model._default_manager.order_by("pk").values_list(*filter(None, [owner]), *fields)
        sql, params = query.query.sql_with_params()
        statements.append((model._meta.label_lower, owner is not None, sql, params))
    return statements


def _snapshot() -> dict[str, list[tuple]]:
    """Every row of every model of the project's apps, as the database holds it."""
    snapshot = {}
    with connection.cursor() as cursor:
        for label, owned, sql, params in _statements():
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            snapshot[label] = rows if owned else [(None, *row) for row in rows]
    return snapshot


def _outside(snapshot: dict, organization: Organization) -> dict[str, list[tuple]]:
    """The rows of a snapshot that do not belong to `organization`."""
    return {
        label: [row for row in rows if row[0] != organization.pk]
        for label, rows in snapshot.items()
    }


def _unchanged(before: dict, where: tuple) -> dict:
    after = _snapshot()
    changed = [label for label in before if before[label] != after[label]]
    assert changed == [], (where, "changed the database")
    return after


# --- The walk ---------------------------------------------------------------------------------
PORTAL = [name for name, entry in ROUTES.items() if isinstance(entry, Portal)]
GUESSABLE = [name for name in PORTAL if ROUTES[name].guessable]
API = [name for name, entry in ROUTES.items() if isinstance(entry, Api)]
UNTENANTED = [name for name, entry in ROUTES.items() if isinstance(entry, Untenanted)]


def test_every_route_is_in_the_table_and_every_entry_is_a_route() -> None:
    resolved = _resolved()
    names = [name for name, _route, _view in resolved]
    routes = {name: route for name, route, _view in resolved}
    problems = [
        f"{name}: more than one route has this name" for name in names if names.count(name) > 1
    ]
    problems += [
        f"{name} ({route}): missing from ROUTES; say what it answers another organization"
        for name, route in routes.items()
        if name not in ROUTES
    ]
    problems += [
        f"{name}: in ROUTES, but there is no such route" for name in ROUTES if name not in routes
    ]
    for name, entry in ROUTES.items():
        if name in routes and routes[name] != entry.route:
            problems.append(f"{name}: the route is {routes[name]!r}, ROUTES says {entry.route!r}")
        if ("<slug:slug>" in entry.route) != isinstance(entry, Portal):
            problems.append(f"{name}: routes that name an organization, and only those, are Portal")
        if isinstance(entry, Api | Untenanted) and not (entry.why or getattr(entry, "ids", None)):
            problems.append(f"{name}: say why it names no organization")
        if not entry.methods:
            problems.append(f"{name}: no methods")
    assert problems == []


def _accepted(view: Callable, path: str, signed_in: Client) -> set[str] | str:
    """The methods a view answers: a class says; a function view is asked with a method
    nobody accepts and must refuse it with 405 and the list."""
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        names = view.view_initkwargs.get("http_method_names", view_class.http_method_names)
        methods = {m.upper() for m in names if hasattr(view_class, m)}
        return methods | ({"HEAD"} if "GET" in methods else set())
    for client in (signed_in, Client(REMOTE_ADDR=CUSTOMER_ADDRESS)):
        response = client.generic(PROBE, path)
        if response.status_code == 405:
            return set(response["Allow"].split(", "))
    return f"answers {response.status_code} to {PROBE}: it must refuse methods it does not serve"


def test_each_entry_names_exactly_the_methods_its_view_accepts(world: World) -> None:
    # Our own objects, and the password just typed, so only the method can be refused.
    owner = _client(world, Role.OWNER, reauthenticated=True)
    problems = []
    for name, _route, view in _resolved():
        entry = ROUTES.get(name)
        if entry is None:
            continue  # the test above names it
        slug = {"slug": world.mine.org.slug} if isinstance(entry, Portal) else {}
        path = reverse(name, kwargs={**slug, **_variants(entry, world, world.mine)[0]})
        accepted = _accepted(view, path, owner)
        if accepted != set(entry.methods.split()):
            problems.append(f"{name}: ROUTES says {entry.methods}, the view accepts {accepted}")
    assert problems == []


@pytest.mark.parametrize("name", PORTAL)
def test_their_pages_are_404_to_each_of_our_roles(world: World, name: str) -> None:
    entry = ROUTES[name]
    before = _snapshot()
    for ids in _variants(entry, world, world.theirs):
        path = reverse(name, kwargs={"slug": world.theirs.org.slug, **ids})
        for role in world.roles:
            client = _client(world, role)
            for method in entry.methods.split():
                where = (name, role, method, path)
                _check(_send(client, method, path, entry.data), NOT_FOUND, world, where)
                before = _unchanged(before, where)


@pytest.mark.parametrize("name", GUESSABLE)
def test_their_ids_under_our_slug(world: World, name: str) -> None:
    """A guessed id is refused before anything else, password re-entered or not: a role
    without the permission gets 403 whatever the id, a role with it what a missing id gets."""
    entry = ROUTES[name]
    methods, data = entry.guessed_with(world)
    before = _snapshot()
    for ids in _variants(entry, world, world.theirs):
        path = reverse(name, kwargs={"slug": world.mine.org.slug, **ids})
        for role in world.roles:
            expected = entry.guessed if can(role, entry.permission) else FORBIDDEN
            for reauthenticated in (False, True):
                client = _client(world, role, reauthenticated=reauthenticated)
                for method in methods:
                    where = (name, role, reauthenticated, method, path)
                    _check(_send(client, method, path, data), expected, world, where)
                    before = _unchanged(before, where)


@pytest.mark.parametrize("name", API)
def test_our_key_against_their_organization(world: World, name: str) -> None:
    entry = ROUTES[name]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {world.mine.raw_key}", REMOTE_ADDR=CUSTOMER_ADDRESS)
    params = {**entry.params(world), "org": world.theirs.org.slug}
    before = _snapshot()
    for ids in _variants(entry, world, world.theirs):
        path = reverse(name, kwargs=ids)
        for method, answer in entry.key.items():
            where = (name, "key", method, path)
            if not answer.ours_change:
                _check(_send(client, method, path, params, api=True), answer, world, where)
                before = _unchanged(before, where)
                continue
            response = _send(client, method, path, params, api=True)
            _check(response, answer, world, where)
            after = _snapshot()
            mine = world.mine.org
            assert _outside(after, mine) == _outside(before, mine), (where, "changed theirs")
            created = Reservation.objects.get(public_id=response.json()["id"])
            assert created.organization == mine, where
            before = after


@pytest.mark.parametrize("name", API)
def test_our_members_sessions_naming_their_organization(world: World, name: str) -> None:
    entry = ROUTES[name]
    # Their organization by name; and ours with their ids, where the route takes ids.
    named = [world.theirs.org] + ([world.mine.org] if entry.ids is not None else [])
    before = _snapshot()
    for ids in _variants(entry, world, world.theirs):
        path = reverse(name, kwargs=ids)
        for organization in named:
            params = {**entry.params(world), "org": organization.slug}
            for role in world.roles:
                client = _client(world, role)
                for method in entry.methods.split():
                    where = (name, role, organization.slug, method, path)
                    response = _send(client, method, path, params, api=True)
                    _check(response, entry.session_answer(method), world, where)
                    before = _unchanged(before, where)


@pytest.mark.parametrize("name", UNTENANTED)
def test_routes_without_a_tenant(world: World, name: str) -> None:
    entry = ROUTES[name]
    path = reverse(name, kwargs=entry.args(world))
    before = _snapshot()
    for role in world.roles:
        for method, answer in entry.answers.items():
            client = _client(world, role)
            where = (name, role, method, path)
            _check(_send(client, method, path, entry.params(world)), answer, world, where)
            before = _unchanged(before, where)


OWN_PAGES = [name for name in PORTAL if "GET" in ROUTES[name].methods.split()]


@pytest.mark.parametrize("name", OWN_PAGES)
def test_our_own_pages_show_nothing_of_theirs(world: World, name: str) -> None:
    """Our pages (with our ids) list and show only ours: 200 to a role that may see them,
    403 to one that may not, and never anything of theirs."""
    entry = ROUTES[name]
    before = _snapshot()
    for ids in _variants(entry, world, world.mine):
        path = reverse(name, kwargs={"slug": world.mine.org.slug, **ids})
        for role in world.roles:
            expected = OK if can(role, entry.permission) else FORBIDDEN
            client = _client(world, role, reauthenticated=True)
            _check(_send(client, "GET", path, {}), expected, world, (name, role, path))
    mine = world.mine.org
    assert _outside(_snapshot(), mine) == _outside(before, mine), (name, "changed theirs")
