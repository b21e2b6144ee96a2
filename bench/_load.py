"""The mixed load test, run in a process whose Django is set up on the bench database.

It seeds the demo inventory and the customer organizations, starts the stack (localstripe,
gunicorn, a Celery worker and beat on Redis), runs the load generator (bench/_loadgen.py, a
separate process), lets the system settle, and then checks with SQL, and against Stripe's own
records, that the run left the data consistent.
"""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
import requests
from django.conf import settings
from django.contrib.auth.hashers import Argon2PasswordHasher
from django.core.management import CommandError, call_command
from django.db import connection

from accounts import api_keys
from accounts.models import User
from billing import demo as billing_demo
from billing import gateway
from billing.models import BillingAccount, FinanceFlag, WebhookEvent
from billing.services import accounts, terms
from capacity import demo
from capacity.models import GpuModel, Region
from core.money import from_minor, to_minor

from . import fixtures, stack
from ._webhooks import SECRET as WEBHOOK_SECRET
from .database import Database, progress

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "bench" / "results" / "load-logs"
SECRET_KEY = stack.STRIPE_KEY
PASSWORD = "load-test-password-1"
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")
CACHE_URL = os.environ.get("BENCH_CACHE_URL", "redis://127.0.0.1:6379/14")
WEB_WORKERS = 2
ORG_PREFIX = "load-"
SETTLE_SECONDS = 180  # the longest the system may take to finish its work after the load
CONFIRMED = ["scheduled", "provisioning", "active", "releasing", "completed"]
LIVE = ["held", "scheduled", "provisioning", "active", "releasing"]
INVOICE_EVERY = 4  # every 4th customer organization is on invoice terms (net 30)
LOAD_CREDIT_LIMIT = "50000000.00"  # far above what a run books: no refusal for credit


# --- Seeding -----------------------------------------------------------------------------------
def _staff() -> User:
    """The sales member who approves invoice terms (the terms service asks for one)."""
    return User.objects.create_user(
        "sales@load.example", password=None, is_staff=True, is_superuser=True
    )


def _customers(count: int, api: str, staff: User) -> list[dict]:
    """Organizations on card terms, each with a verified owner who signs in with a password
    (hashed with Argon2, as in production: signing in costs what it costs there), an API key
    and a saved card; every INVOICE_EVERY-th on invoice terms instead (its blocks confirmed at
    once and invoiced at Stripe; its clients pay those invoices there)."""
    hasher = Argon2PasswordHasher()
    customers = []
    for n in range(1, count + 1):
        organization, owner = fixtures.verified_owner(f"{ORG_PREFIX}{n:02d}")
        on_invoice = n % INVOICE_EVERY == 0
        if on_invoice:
            terms.invoice_terms_approve(
                organization=organization,
                actor=staff,
                credit_limit=LOAD_CREDIT_LIMIT,
                payment_days=30,
                reason="Load test.",
            )
        owner.password = hasher.encode(PASSWORD, hasher.salt())
        owner.save(update_fields=["password"])
        _record, key = api_keys.api_key_create(
            organization=organization,
            actor=owner,
            name="load test",
            scopes=["reservations:read", "reservations:write", "billing:read"],
        )
        account = accounts.billing_account_ensure(organization)
        card = stack.card(api)
        gateway.payment_method_attach(
            payment_method_id=card,
            customer_id=account.stripe_customer_id,
            idempotency_key=f"attach:{account.pk}:{card}",
        )
        BillingAccount.objects.filter(pk=account.pk).update(default_payment_method_id=card)
        customers.append(
            {
                "slug": organization.slug,
                "email": owner.email,
                "password": PASSWORD,
                "api_key": key,
                "invoice_terms": on_invoice,
                "stripe_customer": account.stripe_customer_id,
                "card": card,
            }
        )
    return customers


# --- Stripe's side -----------------------------------------------------------------------------
def _stripe_list(api: str, resource: str) -> list[dict]:
    """Every object of a kind localstripe holds (it pages oldest first); bounded."""
    found: list[dict] = []
    after = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": 100}
        if after:
            params["starting_after"] = after
        page = requests.get(
            f"{api}/v1/{resource}", params=params, auth=(SECRET_KEY, ""), timeout=30
        ).json()
        found += page["data"]
        if not page["data"] or not page.get("has_more"):
            return found
        after = page["data"][-1]["id"]
    raise RuntimeError(f"more than 100,000 {resource} in localstripe")


def _deliver_missing(web: str, api: str, attempted: dict[str, str]) -> int:
    """Deliver what Stripe would still deliver after the load stopped: events the generator
    had not picked up yet, and deliveries cut off when it stopped."""
    stored = set(WebhookEvent.objects.values_list("stripe_event_id", flat=True))
    bodies = {e["id"]: json.dumps(e).encode() for e in _stripe_list(api, "events")}
    bodies.update({k: v.encode() for k, v in attempted.items() if k not in bodies})
    missing = [event_id for event_id in bodies if event_id not in stored]
    for event_id in missing:
        attempted.setdefault(event_id, bodies[event_id].decode())
        stack.deliver_webhook(web, bodies[event_id], WEBHOOK_SECRET)
    return len(missing)


# --- Settling ----------------------------------------------------------------------------------
def _rows(sql: str, params: tuple = ()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _queued(broker: redis.Redis) -> int:
    """Tasks waiting in the broker or taken by the worker and not yet acknowledged."""
    waiting = sum(broker.llen(key) for key in broker.scan_iter() if broker.type(key) == b"list")
    return waiting + broker.hlen("unacked")


def _unsettled(broker: redis.Redis) -> dict[str, int]:
    """Work the system still owes: when all of it is zero the run has settled."""
    (events,) = _rows(
        "SELECT COUNT(*) FROM billing_webhookevent e"
        " LEFT JOIN billing_webhookprocessing p ON p.event_id = e.id"
        " WHERE p.id IS NULL OR p.status = 'pending'"
    )[0]
    (refunds,) = _rows("SELECT COUNT(*) FROM billing_refund WHERE status = 'pending'")[0]
    (provisioning,) = _rows(
        "SELECT COUNT(*) FROM capacity_reservation WHERE state IN ('provisioning', 'releasing')"
    )[0]
    (uninvoiced,) = _rows(
        "SELECT COUNT(*) FROM capacity_reservation r"
        " JOIN accounts_organization o ON o.id = r.organization_id"
        " LEFT JOIN billing_invoice i ON i.reservation_id = r.id AND i.extension_id IS NULL"
        " WHERE o.payment_terms = 'invoice' AND r.state = ANY(%s)"
        " AND i.stripe_invoice_id IS NULL",
        (CONFIRMED,),
    )[0]
    (uncredited,) = _rows(
        "SELECT COUNT(*) FROM capacity_reservation r"
        " JOIN billing_invoice i ON i.reservation_id = r.id"
        " WHERE r.state = 'canceled' AND r.refund_due > 0 AND i.stripe_invoice_id IS NOT NULL"
        " AND i.extension_id IS NULL"  # the refund is credited on any of its invoices
        " AND NOT EXISTS (SELECT 1 FROM billing_ledgerentry l"
        "  JOIN billing_invoice j ON j.id = l.invoice_id"
        "  WHERE j.reservation_id = r.id AND l.kind = 'credit')"
    )[0]
    return {
        "events_unprocessed": events,
        "refunds_pending": refunds,
        "invoices_unsent": uninvoiced,
        "invoice_credits_pending": uncredited,
        "money_unsettled": len(_paid_not_confirmed()),
        "reservations_in_transition": provisioning,
        "tasks_queued": _queued(broker),
    }


def _settle(web: str, api: str, attempted: dict[str, str], broker: redis.Redis) -> dict:
    began = time.monotonic()
    delivered = _deliver_missing(web, api, attempted)
    deadline = began + SETTLE_SECONDS
    while True:
        left = _unsettled(broker)
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    delivered += _deliver_missing(web, api, attempted)  # nothing, unless work made events
    time.sleep(2)
    left = _unsettled(broker)
    return {
        "events_delivered_after_the_load": delivered,
        "seconds": round(time.monotonic() - began, 1),
        "settled": not any(left.values()),
        "left": left,
    }


# --- Invariants --------------------------------------------------------------------------------
def _check(passed: bool, detail: str, violations: list | None = None) -> dict:
    return {
        "passed": passed,
        "detail": detail,
        "violations": [list(v) for v in violations or []][:10],
    }


def _allocations() -> dict:
    """No node in two live allocations whose periods overlap; every live reservation holds
    exactly its nodes; no ended one holds any."""
    overlapping = fixtures.overlapping_live_pairs()
    released_but_live = _rows(
        "SELECT r.public_id, r.state, COUNT(*) FROM capacity_allocation a"
        " JOIN capacity_reservation r ON r.id = a.reservation_id"
        " WHERE a.released_at IS NULL AND r.state <> ALL(%s) GROUP BY r.public_id, r.state",
        (LIVE,),
    )
    wrong_count = _rows(
        "SELECT r.public_id, r.state, r.node_count, COUNT(a.id) FROM capacity_reservation r"
        # The hours an extension holds while it is paid for are allocations of their own.
        " LEFT JOIN capacity_allocation a ON a.reservation_id = r.id AND a.released_at IS NULL"
        "  AND a.extension_id IS NULL"
        " WHERE r.state = ANY(%s) GROUP BY r.id HAVING COUNT(a.id) <> r.node_count",
        (LIVE,),
    )
    (live,) = _rows("SELECT COUNT(*) FROM capacity_allocation WHERE released_at IS NULL")[0]
    return _check(
        overlapping == 0 and not released_but_live and not wrong_count,
        f"{live:,} live allocations; {overlapping} overlapping pairs on one node, "
        f"{len(released_but_live)} ended reservations still holding nodes, "
        f"{len(wrong_count)} live reservations holding a wrong number of nodes",
        [("overlapping_pairs", overlapping)] if overlapping else released_but_live + wrong_count,
    )


def _paid_not_confirmed() -> list[tuple]:
    """Paid reservations whose state or refunds do not match their payments (the block's and
    its paid extensions', summed): paid ones must be confirmed (scheduled or later) and keep
    the money; a canceled one gives back what the policy set when it was canceled (everything
    if it was still unpaid then, i.e. paid late); a failed one everything. A second payment of
    one reservation (flagged), and a payment for an extension that was never applied (lapsed
    or canceled before its money arrived), are given back in full."""
    kept = _rows(
        "SELECT r.public_id, r.state, r.total, r.refund_due, COUNT(p.id), SUM(p.amount),"
        " SUM(p.amount_refunded)"
        " FROM capacity_reservation r"
        " JOIN billing_payment p ON p.reservation_id = r.id AND p.status = 'succeeded'"
        "  AND NOT p.flagged"
        " LEFT JOIN capacity_extension x ON x.id = p.extension_id"
        " JOIN accounts_organization o ON o.id = r.organization_id"
        " WHERE o.slug LIKE %s AND (x.id IS NULL OR x.state = 'paid')"
        " GROUP BY r.id HAVING NOT ("
        "  (r.state = ANY(%s) AND SUM(p.amount_refunded) = 0)"
        "  OR (r.state = 'canceled'"
        "      AND SUM(p.amount_refunded) = COALESCE(r.refund_due, SUM(p.amount)))"
        "  OR (r.state = 'failed' AND SUM(p.amount_refunded) = SUM(p.amount)))",
        (f"{ORG_PREFIX}%", CONFIRMED),
    )
    given_back = _rows(
        "SELECT r.public_id, r.state, p.public_id, x.public_id, x.state, p.amount,"
        " p.amount_refunded, p.flagged"
        " FROM billing_payment p JOIN capacity_reservation r ON r.id = p.reservation_id"
        " LEFT JOIN capacity_extension x ON x.id = p.extension_id"
        " JOIN accounts_organization o ON o.id = r.organization_id"
        " WHERE o.slug LIKE %s AND p.status = 'succeeded'"
        " AND (p.flagged OR (x.id IS NOT NULL AND x.state <> 'paid'))"
        " AND p.amount_refunded <> p.amount",
        (f"{ORG_PREFIX}%",),
    )
    return kept + given_back


def _payments_match_states() -> dict:
    wrong = _paid_not_confirmed()
    unpaid = _rows(
        "SELECT r.public_id, r.state FROM capacity_reservation r"
        " JOIN accounts_organization o ON o.id = r.organization_id"
        " WHERE o.slug LIKE %s AND r.state = ANY(%s) AND NOT EXISTS ("
        "  SELECT 1 FROM billing_payment p WHERE p.reservation_id = r.id"
        "  AND p.status = 'succeeded' AND NOT p.flagged)"
        # On invoice terms the invoice is the money (checked by _invoices).
        " AND NOT EXISTS (SELECT 1 FROM billing_invoice i WHERE i.reservation_id = r.id"
        "  AND i.stripe_invoice_id IS NOT NULL)",
        (f"{ORG_PREFIX}%", CONFIRMED),
    )
    states = dict(
        _rows(
            "SELECT r.state, COUNT(*) FROM capacity_reservation r"
            " JOIN accounts_organization o ON o.id = r.organization_id"
            " WHERE o.slug LIKE %s GROUP BY r.state",
            (f"{ORG_PREFIX}%",),
        )
    )
    return {
        **_check(
            not wrong and not unpaid,
            f"{len(wrong)} paid reservations in the wrong state or wrongly refunded, "
            f"{len(unpaid)} confirmed without a payment",
            wrong + unpaid,
        ),
        "states": states,
    }


def _stripe_agrees(intents: list[dict], refunds: list[dict]) -> dict:
    """What Stripe kept for each reservation (captured minus refunded) is what its state says
    it should be, and every PaymentIntent Stripe charged is a payment we booked."""
    captured: dict[str, int] = defaultdict(int)
    by_intent: dict[str, str] = {}
    for intent in intents:
        reservation = (intent.get("metadata") or {}).get("reservation")
        if intent["status"] == "succeeded" and reservation:
            captured[reservation] += intent["amount"]
            by_intent[intent["id"]] = reservation
    refunded: dict[str, int] = defaultdict(int)
    for refund in refunds:
        if refund.get("status") == "succeeded" and refund.get("payment_intent") in by_intent:
            refunded[by_intent[refund["payment_intent"]]] += refund["amount"]
    # A second charge for a paid reservation is booked too, as a duplicate (and refunded).
    booked = _rows(
        "SELECT stripe_payment_intent_id FROM billing_payment"
        " WHERE status IN ('succeeded', 'duplicate')"
    )
    ours = {row[0] for row in booked}
    unknown = [(i, "charged by Stripe, not booked") for i in by_intent if i not in ours]
    wrong = []
    for public_id, state, total, refund_due, currency in _rows(
        "SELECT r.public_id, r.state, r.total, r.refund_due, r.currency"
        " FROM capacity_reservation r JOIN accounts_organization o ON o.id = r.organization_id"
        " WHERE o.slug LIKE %s AND NOT EXISTS ("  # invoiced ones: _invoices
        "  SELECT 1 FROM billing_invoice i WHERE i.reservation_id = r.id)",
        (f"{ORG_PREFIX}%",),
    ):
        if state in CONFIRMED:
            expected = total
        elif state == "canceled" and refund_due is not None:
            expected = total - refund_due
        else:
            expected = Decimal("0")
        kept = from_minor(captured[public_id] - refunded[public_id], currency)
        if kept != expected:
            wrong.append((public_id, state, f"Stripe kept {kept} {currency}, expected {expected}"))
    return _check(
        not unknown and not wrong,
        f"{len(by_intent)} PaymentIntents charged, {len(refunds)} refunds at Stripe; "
        f"{len(wrong)} reservations where Stripe kept a different amount, "
        f"{len(unknown)} charges we did not book",
        unknown + wrong,
    )


def _invoices(invoices: list[dict], notes: list[dict]) -> dict:
    """On invoice terms, what Stripe invoiced each reservation less its credit notes (nothing
    when the invoice was voided) is what its state says it should be, and the invoice's status
    here is Stripe's; every confirmed block of an organization on invoice terms was invoiced."""
    at_stripe = {invoice["id"]: invoice for invoice in invoices}
    credited: dict[str, int] = defaultdict(int)
    for note in notes:
        if note.get("status") != "void":
            credited[note["invoice"]] += note["amount"]
    wrong: list[tuple] = []
    statuses: dict[str, int] = defaultdict(int)
    # A reservation has its block's invoice and one per extension: what Stripe kept is summed
    # over them.
    rows = _rows(
        "SELECT r.public_id, r.state, r.total, r.refund_due, r.currency, i.stripe_invoice_id,"
        " i.status, i.extension_id FROM capacity_reservation r"
        " JOIN accounts_organization o ON o.id = r.organization_id"
        " LEFT JOIN billing_invoice i ON i.reservation_id = r.id"
        " WHERE i.id IS NOT NULL OR (o.payment_terms = 'invoice' AND r.state = ANY(%s))"
        " ORDER BY r.id, i.id",
        (CONFIRMED,),
    )
    reservations: dict[str, tuple] = {}
    kept_minor: dict[str, int] = defaultdict(int)
    for public_id, state, total, refund_due, currency, stripe_id, status, extension in rows:
        reservations[public_id] = (state, total, refund_due, currency)
        theirs = at_stripe.get(stripe_id or "")
        if theirs is None:
            if extension is None or status not in ("void", "draft", "abandoned"):
                wrong.append(
                    (public_id, state, f"no invoice at Stripe ({stripe_id or 'not sent'})")
                )
            continue
        statuses[theirs["status"]] += 1
        if theirs["status"] != "void":
            kept_minor[public_id] += theirs["total"] - credited[stripe_id]
        if theirs["status"] != status:
            wrong.append((public_id, stripe_id, f"here {status}, at Stripe {theirs['status']}"))
    for public_id, (state, total, refund_due, currency) in reservations.items():
        if state in CONFIRMED:
            expected = total
        elif state == "canceled" and refund_due is not None:
            expected = total - refund_due
        else:
            expected = Decimal("0")
        kept = from_minor(kept_minor[public_id], currency)
        if kept != expected:
            wrong.append((public_id, state, f"Stripe kept {kept}, expected {expected}"))
    return {
        **_check(
            not wrong,
            f"{len(reservations)} invoiced reservations, {len(notes)} credit notes at Stripe; "
            f"{len(wrong)} differences",
            wrong,
        ),
        "at_stripe": dict(statuses),
    }


def _events(attempted: dict[str, str]) -> dict:
    """Every event delivered is stored once, and processed exactly once."""
    stored = set(WebhookEvent.objects.values_list("stripe_event_id", flat=True))
    delivered = set(attempted)
    not_once = _rows(
        "SELECT e.stripe_event_id, e.type, p.status, p.attempts, LEFT(p.last_error, 300)"
        " FROM billing_webhookevent e LEFT JOIN billing_webhookprocessing p ON p.event_id = e.id"
        " WHERE p.id IS NULL OR p.status NOT IN ('processed', 'ignored') OR p.attempts <> 1"
    )
    by_status = dict(
        _rows(
            "SELECT COALESCE(p.status, 'not picked up'), COUNT(*) FROM billing_webhookevent e"
            " LEFT JOIN billing_webhookprocessing p ON p.event_id = e.id GROUP BY 1"
        )
    )
    lost = sorted(delivered - stored)
    stray = sorted(stored - delivered)
    return {
        **_check(
            not not_once and not lost and not stray,
            f"{len(delivered):,} events delivered, {len(stored):,} stored; "
            f"{len(not_once)} not processed exactly once, {len(lost)} lost, {len(stray)} stray",
            not_once + [(e, "delivered, not stored") for e in lost] + [(e, "stray") for e in stray],
        ),
        "by_status": by_status,
    }


def _ledger(intents: list[dict], refunds: list[dict]) -> dict:
    """The ledger as billing/services/ writes it, row by row and per organization.

    A card payment books a charge of the reservation's price (unless flagged) and a payment
    of what Stripe took, negative; a duplicate payment (a paid reservation charged again) books
    the payment alone. A refund books the refund paid out (positive) and, when its payment was
    charged for something, a credit taking that back (negative). So each organization's
    balance is its unflagged charges minus its payments plus what went back on uncharged ones,
    and matches what Stripe took and gave back from its customer. Invoices' rows (and the
    PaymentIntents that paid invoices at Stripe) are left to _invoices and check_books.
    """
    payments = _rows(
        "SELECT p.public_id, p.status, p.amount, p.flagged,"
        " COUNT(l.id) FILTER (WHERE l.kind = 'payment'),"
        " COALESCE(SUM(l.amount) FILTER (WHERE l.kind = 'payment'), 0),"
        " COUNT(l.id) FILTER (WHERE l.kind = 'charge'),"
        " COALESCE(SUM(l.amount) FILTER (WHERE l.kind = 'charge'), 0),"
        " p.amount_refunded,"
        " (SELECT COALESCE(SUM(f.amount), 0) FROM billing_refund f"
        "  WHERE f.payment_id = p.id AND f.status = 'succeeded')"
        " FROM billing_payment p"
        " LEFT JOIN billing_ledgerentry l ON l.payment_id = p.id AND l.refund_id IS NULL"
        " GROUP BY p.id"
    )
    wrong = []
    for public_id, status, amount, flagged, n_pay, paid, n_charge, charged, back, sent in payments:
        if status == "succeeded":
            expected = (1, -amount, 0 if flagged else 1, Decimal(0) if flagged else amount)
        elif status == "duplicate":
            expected = (1, -amount, 0, Decimal(0))
        else:
            expected = (0, 0, 0, 0)
        if (n_pay, paid, n_charge, charged) != expected or back != sent:
            wrong.append((public_id, status, n_pay, paid, n_charge, charged, back, sent))
    refund_rows = _rows(
        "SELECT f.public_id, f.status, f.amount,"
        " COUNT(l.id) FILTER (WHERE l.kind = 'credit'),"
        " COALESCE(SUM(l.amount) FILTER (WHERE l.kind = 'credit'), 0),"
        " COUNT(l.id) FILTER (WHERE l.kind = 'refund'),"
        " COALESCE(SUM(l.amount) FILTER (WHERE l.kind = 'refund'), 0),"
        " EXISTS (SELECT 1 FROM billing_ledgerentry c"
        "  WHERE c.payment_id = f.payment_id AND c.kind = 'charge')"
        " FROM billing_refund f LEFT JOIN billing_ledgerentry l ON l.refund_id = f.id"
        " GROUP BY f.id"
    )
    for public_id, status, amount, n_credit, credit, n_refund, refund, charged in refund_rows:
        if status != "succeeded":
            expected = (0, 0, 0, 0)
        elif charged:
            expected = (1, -amount, 1, amount)
        else:
            expected = (0, 0, 1, amount)
        if (n_credit, credit, n_refund, refund) != expected:
            wrong.append((public_id, status, n_credit, credit, n_refund, refund))
    # Per organization: the balance against the payment rows, and against Stripe.
    stripe_paid: dict[str, int] = defaultdict(int)
    customer_of_intent = {}
    for intent in intents:
        # An invoice paid by card has its PaymentIntent too: the invoice's money (_invoices).
        if intent["status"] == "succeeded" and not intent.get("invoice"):
            stripe_paid[intent["customer"]] += intent["amount"]
            customer_of_intent[intent["id"]] = intent["customer"]
    stripe_refunded: dict[str, int] = defaultdict(int)
    for refund in refunds:
        if refund.get("status") == "succeeded" and refund["payment_intent"] in customer_of_intent:
            stripe_refunded[customer_of_intent[refund["payment_intent"]]] += refund["amount"]
    organizations = {}
    for (
        slug,
        currency,
        customer,
        balance,
        charges,
        paid,
        credits,
        refunded,
        expected,
        uncharged,
    ) in _rows(
        "SELECT o.slug, o.currency, b.stripe_customer_id,"
        " COALESCE((SELECT SUM(amount) FROM billing_ledgerentry"
        "  WHERE organization_id = o.id AND invoice_id IS NULL), 0),"
        " COALESCE((SELECT SUM(amount) FROM billing_ledgerentry"
        "  WHERE organization_id = o.id AND invoice_id IS NULL AND kind = 'charge'), 0),"
        " COALESCE((SELECT SUM(amount) FROM billing_ledgerentry"
        "  WHERE organization_id = o.id AND invoice_id IS NULL AND kind = 'payment'), 0),"
        " COALESCE((SELECT SUM(amount) FROM billing_ledgerentry"
        "  WHERE organization_id = o.id AND invoice_id IS NULL AND kind = 'credit'), 0),"
        " COALESCE((SELECT SUM(amount) FROM billing_ledgerentry"
        "  WHERE organization_id = o.id AND invoice_id IS NULL AND kind = 'refund'), 0),"
        " COALESCE((SELECT SUM(CASE WHEN p.status = 'succeeded' AND NOT p.flagged"
        "  THEN p.amount ELSE 0 END) - SUM(p.amount)"
        "  FROM billing_payment p WHERE p.organization_id = o.id"
        "  AND p.status IN ('succeeded', 'duplicate')), 0),"
        # Refunds of payments nothing was charged for (duplicates, mismatches): no credit.
        " COALESCE((SELECT SUM(l.amount) FROM billing_ledgerentry l"
        "  WHERE l.organization_id = o.id AND l.kind = 'refund' AND NOT EXISTS ("
        "  SELECT 1 FROM billing_ledgerentry c WHERE c.payment_id = l.payment_id"
        "  AND c.kind = 'charge')), 0)"
        " FROM accounts_organization o JOIN billing_billingaccount b ON b.organization_id = o.id"
        " WHERE o.slug LIKE %s ORDER BY o.slug",
        (f"{ORG_PREFIX}%",),
    ):
        expected += uncharged
        matches = (
            balance == expected
            and to_minor(-paid, currency) == stripe_paid[customer]
            and to_minor(refunded, currency) == stripe_refunded[customer]
            and credits == -(refunded - uncharged)
        )
        organizations[slug] = {
            "balance": str(balance),
            "charges": str(charges),
            "payments": str(paid),
            "credits": str(credits),
            "refunds_paid": str(refunded),
            "stripe_took": str(from_minor(stripe_paid[customer], currency)),
            "stripe_gave_back": str(from_minor(stripe_refunded[customer], currency)),
        }
        if not matches:
            took = from_minor(stripe_paid[customer], currency)
            gave = from_minor(stripe_refunded[customer], currency)
            wrong.append(
                (
                    slug,
                    f"balance {balance} (expected {expected}); payments booked {-paid}, "
                    f"Stripe took {took}; refunds booked {refunded}, Stripe gave back {gave}",
                )
            )
    total = sum(Decimal(o["balance"]) for o in organizations.values())
    return {
        **_check(
            not wrong,
            f"{len(payments)} payments, {len(refund_rows)} refunds and {len(organizations)} "
            f"organizations checked against the ledger and Stripe (balances sum to {total}); "
            f"{len(wrong)} mismatches",
            wrong,
        ),
        "organizations": organizations,
    }


def _books() -> dict:
    """`manage.py check_books` as an operator runs it (nothing left for later: the load is
    over): every difference between the ledger and Stripe fails the run."""
    out = io.StringIO()
    with contextlib.suppress(CommandError):  # exit 1: the differences are in the report
        call_command("check_books", "--json", "--grace", "0", stdout=out)
    report = json.loads(out.getvalue())
    return {
        **_check(
            not report["differences"],
            report["summary"],
            [tuple(d.values()) for d in report["differences"]],
        ),
        "not_checked": report["unchecked"],
    }


def _money() -> dict:
    """What the run sold and gave back, for the report: extensions by state (and how they
    were paid), refunds, invoices (the blocks' and the extensions') and credit notes."""

    def counted(sql: str) -> dict[str, list]:
        return {str(k): [n, str(amount)] for k, n, amount in _rows(sql, (f"{ORG_PREFIX}%",))}

    return {
        "extensions": counted(
            "SELECT x.state || CASE WHEN o.payment_terms = 'invoice' THEN ' (invoice)'"
            " WHEN EXISTS (SELECT 1 FROM billing_payment p WHERE p.extension_id = x.id"
            "  AND p.status = 'succeeded') THEN ' (card)' ELSE '' END,"
            " COUNT(*), COALESCE(SUM(x.price), 0) FROM capacity_extension x"
            " JOIN capacity_reservation r ON r.id = x.reservation_id"
            " JOIN accounts_organization o ON o.id = r.organization_id WHERE o.slug LIKE %s"
            " GROUP BY 1"
        ),
        "refunds": counted(
            "SELECT f.status, COUNT(*), COALESCE(SUM(f.amount), 0) FROM billing_refund f"
            " JOIN billing_payment p ON p.id = f.payment_id"
            " JOIN capacity_reservation r ON r.id = p.reservation_id"
            " JOIN accounts_organization o ON o.id = r.organization_id WHERE o.slug LIKE %s"
            " GROUP BY 1"
        ),
        "invoices": counted(
            "SELECT i.status || CASE WHEN i.extension_id IS NULL THEN ' (block)'"
            " ELSE ' (extension)' END, COUNT(*), COALESCE(SUM(i.amount), 0)"
            " FROM billing_invoice i JOIN capacity_reservation r ON r.id = i.reservation_id"
            " JOIN accounts_organization o ON o.id = r.organization_id WHERE o.slug LIKE %s"
            " GROUP BY 1"
        ),
        "invoice_credits": counted(
            "SELECT l.kind, COUNT(*), COALESCE(SUM(l.amount), 0) FROM billing_ledgerentry l"
            " JOIN billing_invoice i ON i.id = l.invoice_id"
            " JOIN capacity_reservation r ON r.id = i.reservation_id"
            " JOIN accounts_organization o ON o.id = r.organization_id WHERE o.slug LIKE %s"
            " AND l.kind = 'credit' GROUP BY 1"
        ),
    }


# --- Logs --------------------------------------------------------------------------------------
# Where a log record starts: Django's format ("ERROR billing.webhooks [request id] ..."),
# Celery's ("[2026-12-01 13:00:00,000: ERROR/ForkPoolWorker-1] ...") or gunicorn's
# ("[2026-12-01 13:00:00 +0000] [123] [CRITICAL] WORKER TIMEOUT ...").
RECORD = re.compile(r"^(?:\[[^\]]+: |\[[^\]]+\] \[\d+\] \[)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")

RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Timeout)\b(:|$)")


def _errors_logged(log: Path) -> tuple[int, list[str]]:
    """How many error records a process logged, and the first few in full (the record's line
    carries the request id; a traceback follows it)."""
    if not log.exists():
        return 0, []
    lines = log.read_text(errors="replace").splitlines()
    starts = [(i, m.group(1)) for i, line in enumerate(lines) if (m := RECORD.match(line))]
    samples: list[str] = []
    count = 0
    for n, (i, level) in enumerate(starts):
        if level not in ("ERROR", "CRITICAL"):
            continue
        count += 1
        if len(samples) < 3:
            end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
            block = lines[i:end]
            # A traceback ends at its last exception line (and the database's DETAIL line);
            # what follows until the next record is other output (a shutdown banner).
            raised = [k for k, line in enumerate(block) if RAISED.match(line)]
            if raised:
                last = raised[-1] + 1
                block = block[: last + (last < len(block) and block[last].startswith("DETAIL:"))]
            if len(block) > 60:  # the record and the innermost frames say what happened
                block = [*block[:3], "...", *block[-50:]]
            samples.append("\n".join(block))
    return count, samples


# --- The run -----------------------------------------------------------------------------------
def _environment(db_url: str, api: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings.local",
        "DJANGO_DEBUG": "false",
        "DATABASE_URL": db_url,
        # Shared by every process, as in production (API key cache, rate limits).
        "CACHE_URL": CACHE_URL,
        # Each simulated customer reserves far more, far faster, than one customer may.
        "CAPACITY_LIMITS": "false",
        "CAPACITY_HOLD_RATE_PER_MINUTE": "0",
        "CELERY_BROKER_URL": BROKER_URL,
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_API_BASE": api,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        # The simulated data center takes a moment and never fails, so a paid block must end
        # up scheduled or active.
        "PROVISIONING_SIMULATED_LATENCY": "0.5",
        "PROVISIONING_SIMULATED_FAILURE_RATE": "0",
        "LOG_LEVEL": "WARNING",
        # Mail is rendered and handed to a backend that drops it, keeping the logs readable.
        "EMAIL_URL": "dummymail://",
    }


def run(*, db: Database, duration: int, users: int, orgs: int, seed: int = 20_261_126) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="hb-bench-load-"))
    web_port, stripe_port = stack.free_port(), stack.free_port()
    web, api = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{stripe_port}"
    settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE = SECRET_KEY, api
    env = _environment(db.url, api)
    broker = redis.Redis.from_url(BROKER_URL)
    broker.flushdb()
    redis.Redis.from_url(CACHE_URL).flushdb()
    processes = stack.start({"stripe": stack.localstripe(stripe_port)}, env, scratch)
    result: dict[str, Any] = {"duration_seconds": duration, "users": users, "organizations": orgs}
    try:
        stack.wait_for(f"{api}/v1/customers", scratch, auth=(SECRET_KEY, ""))
        began = time.perf_counter()
        nodes = demo.load_catalog()
        staff = _staff()
        # The demo's other customer, on invoice terms: its bookings invoiced at Stripe (the
        # bench's tasks run in-process), a few paid, the rest open through the run.
        northwind = demo.northwind_ensure(PASSWORD)
        billing_demo.invoice_terms_ensure(organization=northwind, actor=staff)
        bookings = demo.load_bookings(PASSWORD)
        northwind.refresh_from_db()
        billing_demo.invoices_settle(organization=northwind, pay=3)
        customers = _customers(orgs, api, staff)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        progress(
            f"seeded {nodes} nodes, {bookings} other bookings, {orgs} customer organizations "
            f"in {time.perf_counter() - began:.0f} s"
        )
        processes += stack.start(
            {
                "web": stack.gunicorn(web_port, WEB_WORKERS),
                "worker": stack.celery_worker(concurrency=2),
                "beat": stack.celery_beat(scratch / "celerybeat-schedule"),
            },
            env,
            scratch,
        )
        stack.wait_for(f"{web}/healthz", scratch)
        config = {
            "host": web,
            "stripe": api,
            "stripe_key": SECRET_KEY,
            "webhook_secret": WEBHOOK_SECRET,
            "orgs": customers,
            "catalog": {
                "gpu_models": list(GpuModel.objects.values_list("slug", flat=True)),
                "regions": list(Region.objects.values_list("code", flat=True)),
            },
            "users": users,
            "duration": duration,
            "seed": seed,
        }
        (scratch / "config.json").write_text(json.dumps(config))
        progress(
            f"{users} users for {duration} s against gunicorn ({WEB_WORKERS} workers), "
            "a worker and beat on Redis, localstripe"
        )
        subprocess.run(
            [stack.PYTHON, "-m", "bench._loadgen", scratch / "config.json", scratch / "load.json"],
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
            timeout=duration + 180,
            check=True,
        )
        load = json.loads((scratch / "load.json").read_text())
        attempted = load.pop("events_attempted")
        progress("load over; waiting for the worker to finish what the load left")
        result["settling"] = _settle(web, api, attempted, broker)
        intents = _stripe_list(api, "payment_intents")
        refunds = _stripe_list(api, "refunds")
        invoices = _stripe_list(api, "invoices")
        credit_notes = _stripe_list(api, "credit_notes")
        progress("checking the books against Stripe (check_books)")
        books = _books()  # while localstripe still runs
    finally:
        stack.stop(processes[1:])  # the app first: a task finishing on shutdown may call Stripe
        stack.stop(processes[:1])
        shutil.rmtree(LOGS, ignore_errors=True)
        LOGS.mkdir(parents=True)
        for log in scratch.glob("*.log"):
            shutil.copy(log, LOGS / log.name)
        shutil.rmtree(scratch, ignore_errors=True)
    result["load"] = load
    result["invariants"] = {
        "no_node_double_allocated": _allocations(),
        "paid_reservations_confirmed": _payments_match_states(),
        "stripe_agrees": _stripe_agrees(intents, refunds),
        "invoices_agree": _invoices(invoices, credit_notes),
        "events_processed_once": _events(attempted),
        "ledger_balances": _ledger(intents, refunds),
        "books_check": books,
    }
    result["money"] = _money()
    result["finance_flags"] = {
        kind: FinanceFlag.objects.filter(kind=kind).count()
        for kind in FinanceFlag.objects.values_list("kind", flat=True).distinct()
    }
    result["logs"] = {}
    for name in ("web", "worker", "beat", "stripe"):
        count, samples = _errors_logged(LOGS / f"{name}.log")
        result["logs"][name] = {"errors": count, "first": samples}
    result["errors"] = load["errors"]
    result["passed"] = load["errors"] == 0 and all(
        check["passed"] for check in result["invariants"].values()
    )
    return result
