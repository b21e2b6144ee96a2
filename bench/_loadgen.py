"""The load generator of `bench.load`: locust users against the running stack, in their own
process (locust patches the standard library for gevent on import, which Django's database
driver should not meet). No Django here: everything comes from the JSON config the parent
wrote, and the result goes back as JSON.

    python -m bench._loadgen CONFIG.json RESULT.json

Three kinds of users share the run:
- PortalCustomer signs in once and browses: dashboard, capacity search and calendar,
  reservations list and detail, billing.
- ApiCustomer works with its organization's API key: searches offerings, reserves, pays (the
  saved card, or a PaymentIntent it confirms with Stripe like Stripe.js would; now and then a
  declined card first, or a second attempt racing the first), lists, reads and cancels. On
  invoice terms its blocks are confirmed at once and invoiced; it pays open invoices at
  Stripe (by card, or as paid outside Stripe, a bank transfer).
- StripeWebhooks (one) plays Stripe's delivery: it reads the new events from localstripe and
  posts them signed, redelivers some of them, and sends event types the app does not handle.

A request counts as an error unless its status is the one the call expects, or one of the
refusals the product gives by design (sold out, a reservation that started meanwhile).
"""

import itertools
import json
import random
import re
import sys
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Pool
from locust import HttpUser, between, constant, events, task
from locust.env import Environment
from requests import RequestException, Session  # after locust: gevent patches first

from .stack import sign
from .stats import summarize_ms

CONFIG: dict[str, Any] = {}
TIMEOUT = 30  # seconds per request: a hung server shows up as errors, never as a hung run
CONFIRM_POLLS = 20  # how often a client looks for its paid reservation to be confirmed (1 s apart)
DURATIONS = (1, 2, 4, 8, 12, 24, 48, 72, 168)
NODE_COUNTS = (1, 1, 1, 2, 2, 3, 4)
EXTENSION_HOURS = (1, 2, 4, 8, 24)
HORIZON_HOURS = 7 * 7 * 24  # inside the 8 weeks a block may start ahead
# Stripe's test cards: one that pays, one whose charge is declined (not its attachment).
GOOD_CARD, DECLINED_CARD = "4242424242424242", "4000000000000341"
UNKNOWN_TYPES = (
    "customer.updated",
    "payment_method.attached",
    "charge.succeeded",
    "payout.paid",
    "radar.early_fraud_warning.created",
)


# --- What the run saw --------------------------------------------------------------------------
class Tally:
    def __init__(self) -> None:
        self.latencies_ms: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.errors: dict[str, Counter] = defaultdict(Counter)
        self.refused: dict[str, Counter] = defaultdict(Counter)
        self.kind: dict[str, str] = {}
        self.flows: Counter = Counter()
        self.confirm_ms: list[float] = []
        self.events_attempted: dict[str, str] = {}  # event id -> body, for the drain and checks
        self.per_window: Counter = Counter()  # requests to the app per 10 s of the run
        self.began = time.monotonic()


TALLY = Tally()


@events.request.add_listener
def _record(
    request_type: str,
    name: str,
    response_time: float,
    response: Any = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    TALLY.latencies_ms[name].append(response_time)
    TALLY.kind[name] = "stripe" if request_type == "STRIPE" else "app"
    status = getattr(response, "status_code", None)
    TALLY.statuses[name][str(status or "none")] += 1
    if request_type != "STRIPE":
        TALLY.per_window[int((time.monotonic() - TALLY.began) // 10)] += 1
    if exception is not None:
        TALLY.errors[name][str(exception)[:300]] += 1


def _error_code(response: Any) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: str | None) -> datetime | None:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if value else None


_ORG_TURN = itertools.count()


class _Customer(HttpUser):
    abstract = True

    def on_start(self) -> None:
        turn = next(_ORG_TURN)
        self.org = CONFIG["orgs"][turn % len(CONFIG["orgs"])]
        self.rng = random.Random(CONFIG["seed"] * 1000 + turn)

    def call(
        self,
        method: str,
        path: str,
        name: str,
        *,
        expect: tuple[int, ...] = (200,),
        refusals: tuple[tuple[int, str], ...] = (),
        **kwargs: Any,
    ) -> tuple[Any, str | None]:
        """One request, judged: (response, None) when it got `expect`, (response, code) for a
        refusal by design, (response, "error") otherwise (recorded as a failure)."""
        kwargs.setdefault("allow_redirects", False)  # a lost session must not look like a page
        with self.client.request(
            method, path, name=name, catch_response=True, timeout=TIMEOUT, **kwargs
        ) as response:
            if response.status_code in expect:
                response.success()
                return response, None
            code = _error_code(response)
            if (response.status_code, code) in refusals:
                response.success()
                TALLY.refused[name][code] += 1
                return response, code
            request_id = response.headers.get("X-Request-ID", "") if response.headers else ""
            body = (response.text or "")[:200].replace("\n", " ")
            response.failure(
                f"HTTP {response.status_code} {code} request {request_id}: {body}".strip()
            )
            return response, "error"

    def window(self) -> dict[str, Any]:
        """A search or reservation as customers make them: mostly small, mostly days ahead."""
        catalog = CONFIG["catalog"]
        fields: dict[str, Any] = {
            "gpu_model": self.rng.choice(catalog["gpu_models"]),
            "region": self.rng.choice(catalog["regions"]),
            "node_count": self.rng.choice(NODE_COUNTS),
            "duration_hours": self.rng.choice(DURATIONS),
        }
        if self.rng.random() >= 0.2:  # else no start: the block starts once it is paid
            now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            fields["starts_at"] = _iso(now + timedelta(hours=self.rng.randint(2, HORIZON_HOURS)))
        return fields


# --- The portal in a browser -------------------------------------------------------------------
class PortalCustomer(_Customer):
    weight = 1
    wait_time = between(1, 3)  # reading the page

    def on_start(self) -> None:
        super().on_start()
        self.reservation_ids: list[str] = []
        self.call("GET", "/login/", "GET /login/")
        self.call(
            "POST",
            "/login/",
            "POST /login/",
            expect=(302,),
            data={
                "username": self.org["email"],
                "password": self.org["password"],
                "csrfmiddlewaretoken": self.client.cookies.get("csrftoken", ""),
                "next": "",
            },
        )

    @property
    def base(self) -> str:
        return f"/o/{self.org['slug']}"

    @task(3)
    def dashboard(self) -> None:
        self.call("GET", f"{self.base}/", "GET /o/[org]/")

    @task(2)
    def capacity_search(self) -> None:
        self.call(
            "GET", f"{self.base}/capacity/", "GET /o/[org]/capacity/?search", params=self.window()
        )

    @task(1)
    def capacity_calendar(self) -> None:
        catalog = CONFIG["catalog"]
        params = {
            "gpu_model": self.rng.choice(catalog["gpu_models"]),
            "region": self.rng.choice(catalog["regions"]),
        }
        self.call(
            "GET",
            f"{self.base}/capacity/calendar/",
            "GET /o/[org]/capacity/calendar/",
            params=params,
        )

    @task(3)
    def reservation_list(self) -> None:
        response, outcome = self.call(
            "GET", f"{self.base}/reservations/", "GET /o/[org]/reservations/"
        )
        if outcome is None:
            found = re.findall(r"/reservations/(rsv_[0-9A-Za-z]+)/", response.text)
            self.reservation_ids = list(dict.fromkeys(found))[:50]

    @task(3)
    def reservation_detail(self) -> None:
        if not self.reservation_ids:
            return self.reservation_list()
        public_id = self.rng.choice(self.reservation_ids)
        self.call(
            "GET", f"{self.base}/reservations/{public_id}/", "GET /o/[org]/reservations/[id]/"
        )
        return None

    @task(1)
    def billing(self) -> None:
        self.call("GET", f"{self.base}/billing/", "GET /o/[org]/billing/")


# --- An API client -----------------------------------------------------------------------------
class ApiCustomer(_Customer):
    weight = 1
    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        super().on_start()
        self.client.headers["Authorization"] = f"Bearer {self.org['api_key']}"
        self.stripe = Session()
        self.stripe.auth = (CONFIG["stripe_key"], "")
        # Ours, as last seen: public id -> (state, start).
        self.mine: dict[str, tuple[str, datetime | None]] = {}

    def remember(self, document: dict) -> None:
        self.mine[document["id"]] = (document["state"], _parse(document.get("starts_at")))

    @task(4)
    def offerings(self) -> None:
        self.call("GET", "/api/v1/offerings/", "GET /api/v1/offerings/", params=self.window())

    @task(3)
    def reservation_list(self) -> None:
        self.call("GET", "/api/v1/reservations/", "GET /api/v1/reservations/", params={"limit": 20})

    @task(2)
    def reservation_detail(self) -> None:
        if not self.mine:
            return
        public_id = self.rng.choice(list(self.mine))
        response, outcome = self.call(
            "GET", f"/api/v1/reservations/{public_id}/", "GET /api/v1/reservations/[id]/"
        )
        if outcome is None:
            self.remember(response.json())

    @task(4)
    def reserve_and_pay(self) -> None:
        body = {**self.window(), "client_token": uuid.uuid4().hex}
        response, outcome = self.call(
            "POST",
            "/api/v1/reservations/",
            "POST /api/v1/reservations/",
            expect=(201,),
            refusals=((409, "capacity_unavailable"), (409, "credit_limit_exceeded")),
            json=body,
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        if outcome is not None:
            TALLY.flows["sold_out" if outcome != "error" else "reserve_failed"] += 1
            return
        reservation = response.json()
        self.remember(reservation)
        TALLY.flows["reserved"] += 1
        if self.org["invoice_terms"]:
            # Confirmed at once; the invoice is made at Stripe after the commit.
            TALLY.flows["confirmed_on_invoice" if reservation["state"] == "scheduled" else
                        f"on_invoice_{reservation['state']}"] += 1  # fmt: skip
            return
        roll = self.rng.random()
        if roll < 0.1:
            TALLY.flows["left_unpaid"] += 1  # the hold lapses on its own
        elif roll < 0.55:
            self.pay_with_saved_card(reservation["id"])
        else:
            self.pay_with_intent(reservation["id"])

    def pay_with_saved_card(self, public_id: str) -> None:
        response, outcome = self.call(
            "POST",
            f"/api/v1/reservations/{public_id}/pay/",
            "POST /api/v1/reservations/[id]/pay/ (saved card)",
            json={"client_token": uuid.uuid4().hex, "use_saved_card": True},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        if outcome is None:
            status = response.json()["status"]
            TALLY.flows["paid_saved_card" if status == "succeeded" else f"saved_card_{status}"] += 1
            if status == "succeeded":  # confirmed in the same request
                self.mine[public_id] = ("scheduled", self.mine[public_id][1])

    def open_intent(self, public_id: str, *, racing: bool = False) -> str | None:
        """A PaymentIntent for the reservation; None when the API (rightly) refuses it."""
        response, outcome = self.call(
            "POST",
            f"/api/v1/reservations/{public_id}/pay/",
            "POST /api/v1/reservations/[id]/pay/ (intent)",
            # A second attempt may find the first one already booked: nothing left to pay.
            refusals=((409, "not_payable"),) if racing else (),
            json={"client_token": uuid.uuid4().hex},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        return response.json()["payment_intent"] if outcome is None else None

    def stripe_call(
        self,
        name: str,
        path: str,
        data: dict,
        expect: int = 200,
        *,
        method: str = "POST",
        refusals: tuple[str, ...] = (),
    ) -> Any:
        """One call to Stripe, timed apart from the app's figures; None when it failed or was
        refused (HTTP 400 with one of the error codes in `refusals`: counted, not an error)."""
        began = time.perf_counter()
        error: BaseException | None = None
        answer = None
        try:
            sent = {"params": data} if method == "GET" else {"data": data}
            answer = self.stripe.request(
                method, f"{CONFIG['stripe']}{path}", timeout=TIMEOUT, **sent
            )
            if answer.status_code == 400 and _error_code(answer) in refusals:
                TALLY.refused[name][_error_code(answer)] += 1
                answer = None
            elif answer.status_code != expect:
                error = RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}")
        except RequestException as exc:
            error = exc
        events.request.fire(
            request_type="STRIPE",
            name=name,
            response_time=(time.perf_counter() - began) * 1000,
            response_length=0,
            response=answer,
            exception=error,
            context={},
        )
        return None if error else answer

    def confirm(self, intent: str, card_number: str, refusals: tuple[str, ...] = ()) -> bool:
        """What Stripe.js does in the customer's browser: make a PaymentMethod of the card the
        customer typed, put it on the PaymentIntent, confirm. True when the charge went
        through; a declined card (HTTP 402) is what the test card is for."""
        method = self.stripe_call(
            "POST /v1/payment_methods",
            "/v1/payment_methods",
            {
                "type": "card",
                "card[number]": card_number,
                "card[exp_month]": "12",
                "card[exp_year]": "2034",
                "card[cvc]": "123",
            },
        )
        if method is None:
            return False
        attached = self.stripe_call(
            "POST /v1/payment_intents/[id]",
            f"/v1/payment_intents/{intent}",
            {"payment_method": method.json()["id"]},
        )
        if attached is None:
            return False
        declined = card_number != GOOD_CARD
        confirmed = self.stripe_call(
            "POST /v1/payment_intents/[id]/confirm",
            f"/v1/payment_intents/{intent}/confirm",
            {},
            expect=402 if declined else 200,
            refusals=refusals,
        )
        return confirmed is not None and not declined

    def pay_with_intent(self, public_id: str) -> None:
        intent = self.open_intent(public_id)
        if intent is None:
            return
        if self.rng.random() < 0.08:  # the first card is declined; the customer tries another
            self.confirm(intent, DECLINED_CARD)
            TALLY.flows["declined_then_retried"] += 1
            intent = self.open_intent(public_id)
            if intent is None:
                return
        if not self.confirm(intent, GOOD_CARD):
            return
        confirmed_at = time.perf_counter()
        TALLY.flows["paid_intent"] += 1
        if self.rng.random() < 0.04:
            # The client lost the first answer and pays again with a new attempt: Stripe takes
            # the money twice, and the app must give one of them back.
            second = self.open_intent(public_id, racing=True)
            if second is not None and self.confirm(second, GOOD_CARD):
                TALLY.flows["paid_twice"] += 1
        self.await_confirmation(public_id, confirmed_at)

    def await_confirmation(self, public_id: str, since: float) -> None:
        """Poll the reservation until the payment's webhook has confirmed it (bounded)."""
        for _ in range(CONFIRM_POLLS):
            gevent.sleep(1)
            response, outcome = self.call(
                "GET",
                f"/api/v1/reservations/{public_id}/",
                "GET /api/v1/reservations/[id]/ (awaiting payment)",
            )
            if outcome is not None:
                return
            document = response.json()
            self.remember(document)
            if document["state"] != "held":
                TALLY.confirm_ms.append((time.perf_counter() - since) * 1000)
                return
        TALLY.flows["not_confirmed_while_polling"] += 1

    @task(2)
    def pay_invoice(self) -> None:
        """On invoice terms: pay one of the organization's open invoices at Stripe, as its
        accounts payable would: with the card on file, or marked paid outside Stripe."""
        if not self.org["invoice_terms"]:
            return
        listed = self.stripe_call(
            "GET /v1/invoices",
            "/v1/invoices",
            {"customer": self.org["stripe_customer"], "status": "open", "limit": 100},
            method="GET",
        )
        open_ones = [i["id"] for i in listed.json()["data"]] if listed is not None else []
        if not open_ones:
            return
        invoice = self.rng.choice(open_ones)
        by_card = self.rng.random() < 0.5
        paid = self.stripe_call(
            "POST /v1/invoices/[id]/pay",
            f"/v1/invoices/{invoice}/pay",
            {"payment_method": self.org["card"]} if by_card else {"paid_out_of_band": "true"},
            # Another client of the organization paid it, or a cancellation voided it, since.
            refusals=("invoice_already_paid", "invoice_not_editable"),
        )
        if paid is not None:
            TALLY.flows["invoice_paid_by_card" if by_card else "invoice_paid_out_of_band"] += 1

    @task(3)
    def extend(self) -> None:
        """Extend a confirmed block: quote the extra hours, then ask for them. On card terms
        the saved card pays off-session, or the client confirms the PaymentIntent itself (now
        and then declined first); on invoice terms the hours are invoiced. Now and then the
        block is canceled right after, so the refund must follow the money of both payments
        (one of which may still be on its way)."""
        choices = [public_id for public_id, (state, _) in self.mine.items() if state == "scheduled"]
        if not choices:
            return
        public_id = self.rng.choice(choices)
        hours = self.rng.choice(EXTENSION_HOURS)
        refusals = (
            (409, "not_extendable"),  # it started and ended, or was canceled, meanwhile
            (409, "capacity_unavailable"),  # its nodes are taken right after its end
            (409, "extension_pending"),  # an earlier extension still waits for its payment
            (400, "invalid"),  # past the longest a block may last
        )
        response, outcome = self.call(
            "GET",
            f"/api/v1/reservations/{public_id}/extend/",
            "GET /api/v1/reservations/[id]/extend/ (quote)",
            refusals=refusals,
            params={"hours": hours},
        )
        if outcome is not None:
            TALLY.flows["extension_quote_refused" if outcome != "error" else "quote_failed"] += 1
            return
        if not response.json()["available"]:
            TALLY.flows["extension_quote_unavailable"] += 1
            return
        saved_card = self.org["invoice_terms"] or self.rng.random() < 0.5
        how = "invoice" if self.org["invoice_terms"] else "saved card" if saved_card else "intent"
        response, outcome = self.call(
            "POST",
            f"/api/v1/reservations/{public_id}/extend/",
            f"POST /api/v1/reservations/[id]/extend/ ({how})",
            expect=(202,),
            refusals=(*refusals, (409, "credit_limit_exceeded")),
            json={"hours": hours, "client_token": uuid.uuid4().hex, "use_saved_card": saved_card},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        if outcome is not None:
            TALLY.flows["extension_refused" if outcome != "error" else "extension_failed"] += 1
            return
        extension = response.json()
        TALLY.flows["extension_requested"] += 1
        way = "invoice" if self.org["invoice_terms"] else "saved_card"
        if extension["client_secret"]:
            way = "intent"
            if self.rng.random() < 0.2:
                # The block is canceled while the page to pay for its extension is still
                # open, and the customer pays anyway: the late money must come back in full.
                self.cancel_one(public_id, "scheduled", label="extension unpaid")
                paid = self.confirm(
                    extension["payment_intent"],
                    GOOD_CARD,
                    # Canceled at Stripe (localstripe answers 400 without a code).
                    refusals=("payment_intent_unexpected_state", ""),
                )
                TALLY.flows["extension_paid_late" if paid else "extension_late_refused"] += 1
                return
            if self.rng.random() < 0.08:
                # Declined: the customer leaves it (localstripe takes no second confirmation
                # of a PaymentIntent whose charge failed); the hold lapses.
                self.confirm(extension["payment_intent"], DECLINED_CARD)
                TALLY.flows["extension_declined"] += 1
                return
            if not self.confirm(extension["payment_intent"], GOOD_CARD):
                TALLY.flows["extension_confirm_failed"] += 1
                return
        TALLY.flows[f"extension_{way}_{extension['state']}"] += 1
        if self.rng.random() < 0.35:  # plans changed: cancel it at once, paid or on its way
            self.cancel_one(public_id, "scheduled", label="after extending")
            TALLY.flows["extended_then_canceled_attempt"] += 1

    def cancel_one(self, public_id: str, state: str, *, label: str = "") -> None:
        response, outcome = self.call(
            "POST",
            f"/api/v1/reservations/{public_id}/cancel/",
            "POST /api/v1/reservations/[id]/cancel/" + (f" ({label})" if label else ""),
            refusals=((409, "not_cancelable"),),
            json={"reason": "Plans changed."},
        )
        if outcome is None:
            self.remember(response.json())
            TALLY.flows[f"canceled_{state}" + ("_" + label.replace(" ", "_") if label else "")] += 1
        elif outcome != "error":
            TALLY.flows["cancel_refused"] += 1

    @task(1)
    def cancel(self) -> None:
        """Cancel a block that has not started: mostly paid ones (refunded by the policy)."""
        soon = datetime.now(UTC) + timedelta(minutes=15)
        choices = [
            (public_id, state)
            for public_id, (state, starts) in self.mine.items()
            if state in ("held", "scheduled") and starts is not None and starts > soon
        ]
        if not choices:
            return
        paid = [c for c in choices if c[1] == "scheduled"]
        public_id, state = self.rng.choice(paid if paid and self.rng.random() < 0.8 else choices)
        self.cancel_one(public_id, state)


# --- Stripe's webhook delivery -----------------------------------------------------------------
class StripeWebhooks(HttpUser):
    fixed_count = 1
    wait_time = constant(1)

    def on_start(self) -> None:
        self.rng = random.Random(CONFIG["seed"])
        self.stripe = Session()
        self.stripe.auth = (CONFIG["stripe_key"], "")
        self.last: str | None = None
        self.sent: list[bytes] = []
        self.unknown = itertools.count(1)
        self.senders = Pool(4)

    def deliver(self, event_id: str, body: bytes, label: str) -> None:
        TALLY.events_attempted.setdefault(event_id, body.decode())
        with self.client.post(
            "/stripe/webhook/",
            data=body,
            name=f"POST /stripe/webhook/ ({label})",
            headers={
                "Content-Type": "application/json",
                "Stripe-Signature": sign(body, CONFIG["webhook_secret"]),
            },
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            duplicate = label == "duplicate"
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif response.json().get("duplicate") is not duplicate:
                # The app must tell a first delivery from a repeat by the event id alone.
                response.failure(f"duplicate={response.json().get('duplicate')} for a {label}")
            else:
                response.success()

    def new_events(self) -> list[dict]:
        """Events localstripe made since the last look, oldest first (it lists them in the
        order they happened), a bounded number of pages per look."""
        found: list[dict] = []
        for _ in range(20):
            params: dict[str, Any] = {"limit": 100}
            if self.last:
                params["starting_after"] = self.last
            began = time.perf_counter()
            error: BaseException | None = None
            page: dict = {"data": [], "has_more": False}
            answer = None
            try:
                answer = self.stripe.get(
                    f"{CONFIG['stripe']}/v1/events", params=params, timeout=TIMEOUT
                )
                answer.raise_for_status()
                page = answer.json()
            except RequestException as exc:
                error = exc
            events.request.fire(
                request_type="STRIPE",
                name="GET /v1/events",
                response_time=(time.perf_counter() - began) * 1000,
                response_length=0,
                response=answer,
                exception=error,
                context={},
            )
            found += page["data"]
            if page["data"]:
                self.last = page["data"][-1]["id"]
            if not page.get("has_more"):
                break
        return found

    @task
    def deliver_due(self) -> None:
        fresh = [(event["id"], json.dumps(event).encode()) for event in self.new_events()]
        # Stripe sends to one endpoint a few requests at a time.
        self.senders.map(lambda item: self.deliver(*item, "event"), fresh)
        self.sent += [body for _, body in fresh]
        # Stripe delivers at least once: some events come again (signed anew), after the
        # first delivery was answered.
        repeats = sum(self.rng.random() < 0.2 for _ in fresh) + (self.rng.random() < 0.3)
        again = self.rng.sample(self.sent, min(repeats, len(self.sent)))
        self.senders.map(
            lambda body: self.deliver(json.loads(body)["id"], body, "duplicate"), again
        )
        if self.rng.random() < 0.2:  # event types the app stores and acknowledges only
            n = next(self.unknown)
            event_id = f"evt_load_unknown_{n:05d}_{uuid.uuid4().hex[:8]}"
            body = json.dumps(
                {
                    "id": event_id,
                    "object": "event",
                    "type": self.rng.choice(UNKNOWN_TYPES),
                    "created": int(time.time()),
                    "data": {"object": {"id": f"obj_load_{n}", "object": "unknown"}},
                }
            ).encode()
            self.deliver(event_id, body, "unknown type")


# --- Running -----------------------------------------------------------------------------------
def _progress(seconds: float) -> None:
    """A line on stderr every 30 s so a long run shows it is alive."""
    began = time.monotonic()
    while True:
        gevent.sleep(30)
        elapsed = time.monotonic() - began
        requests_made = sum(len(v) for k, v in TALLY.latencies_ms.items() if TALLY.kind[k] == "app")
        errors = sum(sum(c.values()) for c in TALLY.errors.values())
        print(
            f"  · {elapsed:.0f}/{seconds:.0f} s: {requests_made:,} requests "
            f"({requests_made / elapsed:.1f}/s), {errors} errors",
            file=sys.stderr,
            flush=True,
        )


def _summary(wall: float) -> dict:
    endpoints = {}
    for name in sorted(TALLY.latencies_ms):
        latencies = TALLY.latencies_ms[name]
        endpoints[name] = {
            "kind": TALLY.kind[name],
            "requests": len(latencies),
            "per_second": round(len(latencies) / wall, 2),
            "latency_ms": summarize_ms([ms / 1000 for ms in latencies]),
            "errors": sum(TALLY.errors[name].values()),
            "error_samples": dict(TALLY.errors[name].most_common(5)),
            "refused": dict(TALLY.refused[name]),
            "statuses": dict(TALLY.statuses[name]),
        }
    app = [e for e in endpoints.values() if e["kind"] == "app"]
    return {
        "wall_seconds": round(wall, 1),
        "requests": sum(e["requests"] for e in app),
        "requests_per_second": round(sum(e["requests"] for e in app) / wall, 1),
        "errors": sum(e["errors"] for e in endpoints.values()),
        "endpoints": endpoints,
        "flows": dict(TALLY.flows),
        "intent_confirmed_to_reservation_confirmed_ms": summarize_ms(
            [ms / 1000 for ms in TALLY.confirm_ms]
        ),
        "requests_per_10s": [TALLY.per_window[i] for i in range(int(wall // 10) + 1)],
        "events_attempted": TALLY.events_attempted,
    }


def main() -> None:
    config_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    CONFIG.update(json.loads(config_path.read_text()))
    users, seconds = CONFIG["users"], CONFIG["duration"]
    environment = Environment(
        user_classes=[PortalCustomer, ApiCustomer, StripeWebhooks],
        events=events,
        host=CONFIG["host"],
    )
    runner = environment.create_local_runner()
    TALLY.began = time.monotonic()
    runner.start(users, spawn_rate=max(1.0, users / 5))
    ticker = gevent.spawn(_progress, seconds)
    gevent.spawn_later(seconds, runner.quit)
    runner.greenlet.join(timeout=seconds + 60)  # quit stops every user; this is the backstop
    wall = time.monotonic() - TALLY.began
    ticker.kill()
    result_path.write_text(json.dumps(_summary(wall)))


if __name__ == "__main__":
    main()
