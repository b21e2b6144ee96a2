"""The HTTP side of localstripe's invoicing (localstripe_invoices, localstripe_credit_notes):
Stripe's routes for invoices, invoice items on an invoice, credit notes and invoice payments,
answered ahead of localstripe's own routes by a middleware, plus a hosted invoice page.

localstripe ignores `Idempotency-Key`; these routes, and by another middleware localstripe's own
POST routes, honour it as Stripe does: the same key with the same request answers what the first
answered (a success or a card decline), without doing it again; the same key with another
request is an `idempotency_error`. The answers are kept in
localstripe's store, so the state file keeps them and `DELETE /_config/data` forgets them.
"""

import html
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from localstripe.errors import UserError
from localstripe.resources import InvoiceItem, InvoiceLineItem, List, store, try_convert_to_bool
from localstripe.server import get_post_data, unflatten_data

from .localstripe_credit_notes import REASONS, CreditNote, credit_note
from .localstripe_invoices import InvoicePayment, NetInvoice, bad_request, net_invoice

Data = dict[str, Any]
Handler = Callable[[web.Request, Data, dict[str, str]], Any]
ID = r"(?P<id>[A-Za-z0-9_]+)"


# --- Parameters, checked as Stripe checks them ----------------------------------------------------
def _only(data: Data, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise bad_request(f"Received unknown parameter: {unknown[0]}", param=unknown[0])


def _int(data: Data, name: str, *, minimum: int = 0, required: bool = False) -> int | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise bad_request(f"Missing required param: {name}.", param=name)
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise bad_request(f"Invalid integer: {value}", param=name) from None
    if number < minimum:
        raise bad_request(f"{name} must be at least {minimum}.", param=name)
    return number


def _bool(data: Data, name: str, default: bool) -> bool:
    value = try_convert_to_bool(data.get(name, default))
    if not isinstance(value, bool):
        raise bad_request(f"Invalid boolean: {value}", param=name)
    return value


def _text(data: Data, name: str, *, choices: tuple[str, ...] = ()) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 5000:
        raise bad_request(f"Invalid string: {name}", param=name)
    if choices and value not in choices:
        raise bad_request(f"Invalid {name}: must be one of {', '.join(choices)}", param=name)
    return value


def _metadata(data: Data) -> dict[str, str]:
    value = data.get("metadata") or {}
    if not isinstance(value, dict) or len(value) > 50:
        raise bad_request("Invalid metadata: up to 50 keys, each a string.", param="metadata")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 40 or len(item) > 500:
            raise bad_request(f"Invalid metadata[{key}].", param=f"metadata[{key}]")
    return dict(value)


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


# --- Invoices -------------------------------------------------------------------------------------
INVOICE_CREATE = {
    "customer", "collection_method", "days_until_due", "due_date", "currency", "description",
    "metadata", "auto_advance", "default_payment_method", "pending_invoice_items_behavior",
}  # fmt: skip


def invoice_create(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    _only(data, INVOICE_CREATE)
    customer = _text(data, "customer")
    if customer is None:
        raise bad_request("Missing required param: customer.", param="customer")
    method = _text(data, "collection_method", choices=("charge_automatically", "send_invoice"))
    method = method or "charge_automatically"
    days, due = _int(data, "days_until_due"), _int(data, "due_date", minimum=1)
    if method == "send_invoice" and days is None and due is None:
        raise bad_request(
            "Invoices with collection_method=send_invoice need days_until_due or due_date.",
            param="days_until_due",
        )
    if method == "charge_automatically" and (days is not None or due is not None):
        raise bad_request(
            "days_until_due and due_date apply to send_invoice invoices only.",
            param="days_until_due",
        )
    # Stripe's default since 2022-08-01; pulling in pending items is not emulated.
    _text(data, "pending_invoice_items_behavior", choices=("exclude",))
    return NetInvoice(
        customer=customer,
        collection_method=method,
        currency=(_text(data, "currency") or "usd").lower(),
        days_until_due=days,
        due_date=due,
        description=_text(data, "description"),
        metadata=_metadata(data),
        auto_advance=_bool(data, "auto_advance", method == "charge_automatically"),
        default_payment_method=_text(data, "default_payment_method"),
    )


def invoice_retrieve(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    obj = store.get(f"invoice:{match['id']}")
    if obj is None:
        raise UserError(404, f"No such invoice: '{match['id']}'", {"param": "id"})
    return obj


def invoice_update(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    _only(data, {"metadata", "description", "days_until_due", "auto_advance"})
    invoice = net_invoice(match["id"])
    changes: Data = {}
    if "metadata" in data:
        changes["metadata"] = _metadata(data)
    if "description" in data:
        changes["description"] = _text(data, "description")
    if "days_until_due" in data:
        changes["days_until_due"] = _int(data, "days_until_due", required=True)
    if "auto_advance" in data:
        changes["auto_advance"] = _bool(data, "auto_advance", False)
    invoice._update(**changes)
    return invoice


def invoice_delete(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    invoice = net_invoice(match["id"])
    if invoice.status != "draft":
        raise bad_request("You can only delete draft invoices.", code="invoice_not_editable")
    return NetInvoice._api_delete(invoice.id)


def invoice_list(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    _only(data, {"customer", "status", "collection_method", "limit", "starting_after"})
    customer, status = _text(data, "customer"), _text(data, "status")
    method = _text(data, "collection_method")
    found = [
        obj
        for key, obj in store.items()
        if key.startswith("invoice:")
        and (customer is None or obj.customer == customer)
        and (status is None or obj.status == status)
        and (method is None or getattr(obj, "collection_method", None) == method)
    ]
    return _page(request, data, found)


def _page(request: web.Request, data: Data, found: list[Any]) -> Any:
    """Newest first, as Stripe lists (the store keeps creation order)."""
    page = List(request.path, limit=data.get("limit"), starting_after=data.get("starting_after"))
    page._list = found[::-1]
    return page


def _step(name: str) -> Handler:
    def handler(request: web.Request, data: Data, match: dict[str, str]) -> Any:
        invoice = net_invoice(match["id"])
        if name == "finalize":
            _only(data, {"auto_advance"})
            invoice._finalize(_origin(request))
        elif name == "send":
            _only(data, set())
            invoice._send()
        elif name == "void":
            _only(data, set())
            invoice._void()
        elif name == "mark_uncollectible":
            _only(data, set())
            invoice._mark_uncollectible()
        else:
            _only(data, {"paid_out_of_band", "payment_method", "off_session", "forgive"})
            invoice._pay(
                origin=_origin(request),
                paid_out_of_band=_bool(data, "paid_out_of_band", False),
                payment_method=_text(data, "payment_method"),
            )
        return invoice

    return handler


def invoice_item_create(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    _only(data, {"customer", "invoice", "amount", "currency", "description", "metadata"})
    invoice = net_invoice(str(data["invoice"]))
    amount = _int(data, "amount", minimum=-(10**12), required=True)
    currency = (_text(data, "currency") or invoice.currency).lower()
    customer = _text(data, "customer") or invoice.customer
    invoice._check_item(customer, currency)
    item = InvoiceItem(
        invoice=invoice.id,
        amount=amount,
        currency=currency,
        customer=customer,
        description=_text(data, "description"),
        metadata=_metadata(data),
    )
    invoice.lines._list.append(InvoiceLineItem(item))
    return item


def invoice_payment_list(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    _only(data, {"invoice", "limit", "payment", "starting_after", "status"})
    invoice, status = _text(data, "invoice"), _text(data, "status")
    if invoice is not None:
        net_invoice(invoice)
    # Stripe's `payment` filter: payment[type]=payment_intent and payment[payment_intent]=pi_...
    paid_by = data.get("payment")
    if paid_by is not None:
        if not isinstance(paid_by, dict) or set(paid_by) - {"type", "payment_intent"}:
            raise bad_request("Invalid payment: give type and payment_intent.", param="payment")
        if paid_by.get("type") != "payment_intent" or not paid_by.get("payment_intent"):
            raise bad_request(
                "Invalid payment: only type payment_intent with its id is supported.",
                param="payment",
            )
    found = [
        obj
        for key, obj in store.items()
        if isinstance(obj, InvoicePayment)
        and (invoice is None or obj.invoice == invoice)
        and (status is None or obj.status == status)
        and (paid_by is None or obj.payment["payment_intent"] == paid_by["payment_intent"])
    ]
    return _page(request, data, found)


def invoice_payment_retrieve(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    obj = store.get(f"invoice_payment:{match['id']}")
    if obj is None:
        raise UserError(404, f"No such invoice payment: '{match['id']}'", {"param": "id"})
    return obj


# --- Credit notes ---------------------------------------------------------------------------------
CREDIT_NOTE_CREATE = {
    "invoice", "amount", "memo", "reason", "metadata", "credit_amount", "refund_amount",
    "out_of_band_amount", "lines", "refunds",
}  # fmt: skip


def credit_note_create(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    _only(data, CREDIT_NOTE_CREATE)
    if "lines" in data or "refunds" in data:
        raise bad_request(
            "This Stripe emulator credits by amount only: give amount, not lines or refunds.",
            param="lines" if "lines" in data else "refunds",
        )
    invoice_id = _text(data, "invoice")
    if invoice_id is None:
        raise bad_request("Missing required param: invoice.", param="invoice")
    return CreditNote(
        invoice=net_invoice(invoice_id),
        amount=_int(data, "amount", minimum=1, required=True) or 0,
        memo=_text(data, "memo"),
        reason=_text(data, "reason", choices=REASONS),
        metadata=_metadata(data),
        credit_amount=_int(data, "credit_amount") or 0,
        refund_amount=_int(data, "refund_amount") or 0,
        out_of_band_amount=_int(data, "out_of_band_amount") or 0,
    )


def credit_note_list(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    _only(data, {"invoice", "customer", "limit", "starting_after"})
    invoice, customer = _text(data, "invoice"), _text(data, "customer")
    found = [
        obj
        for key, obj in store.items()
        if isinstance(obj, CreditNote)
        and (invoice is None or obj.invoice == invoice)
        and (customer is None or obj.customer == customer)
    ]
    return _page(request, data, found)


def credit_note_retrieve(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    return credit_note(match["id"])


def credit_note_void(request: web.Request, data: Data, match: dict[str, str]) -> Any:
    _only(data, set())
    note = credit_note(match["id"])
    note._void()
    return note


# --- Routing and idempotency ----------------------------------------------------------------------
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (method, re.compile(f"^{path}$"), handler)
    for method, path, handler in (
        ("POST", "/v1/invoices", invoice_create),
        ("GET", "/v1/invoices", invoice_list),
        ("GET", f"/v1/invoices/{ID}", invoice_retrieve),
        ("POST", f"/v1/invoices/{ID}", invoice_update),
        ("DELETE", f"/v1/invoices/{ID}", invoice_delete),
        *(
            ("POST", f"/v1/invoices/{ID}/{step}", _step(step))
            for step in ("finalize", "send", "pay", "void", "mark_uncollectible")
        ),
        ("POST", "/v1/invoiceitems", invoice_item_create),
        ("GET", "/v1/invoice_payments", invoice_payment_list),
        ("GET", f"/v1/invoice_payments/{ID}", invoice_payment_retrieve),
        ("POST", "/v1/credit_notes", credit_note_create),
        ("GET", "/v1/credit_notes", credit_note_list),
        ("GET", f"/v1/credit_notes/{ID}", credit_note_retrieve),
        ("POST", f"/v1/credit_notes/{ID}/void", credit_note_void),
    )
]


def _body(payload: Any, status: int = 200, replayed: bool = False) -> Any:
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return web.Response(status=status, text=text, content_type="application/json", headers=headers)


def _resolve(request: web.Request) -> tuple[Handler, dict[str, str]] | None:
    for method, pattern, route in ROUTES:
        found = pattern.match(request.path)
        if request.method == method and found:
            return route, found.groupdict()
    return None


@web.middleware
async def invoicing_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]
) -> Any:
    """Answer the invoicing routes here; everything else goes on to localstripe."""
    routed = _resolve(request)
    if routed is None:
        return await handler(request)
    route, match = routed
    if request.method == "POST":
        data = await get_post_data(request) or {}
    else:
        data = unflatten_data(request.query) or {}
    if route is invoice_item_create and not data.get("invoice"):
        return await handler(request)  # a pending item: localstripe's own
    key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
    request_print = json.dumps([request.method, request.path, data], sort_keys=True, default=str)
    if key:
        kept = store.get(f"idempotency:{key}")
        if kept is not None:
            if kept[0] != request_print:
                return _idempotency_error(key)
            return _body(kept[2], status=kept[1], replayed=True)
    expand = data.pop("expand", None)
    try:
        payload, status = route(request, data, match)._export(expand=expand), 200
    except UserError as exc:
        if exc.code != 402 or not key:
            raise
        payload, status = exc.body, exc.code  # a decline is an answer: kept like a success
    if key:
        store[f"idempotency:{key}"] = (request_print, status, payload)
    return _body(payload, status=status)


@web.middleware
async def idempotency_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]
) -> Any:
    """Stripe's `Idempotency-Key` on localstripe's own POST routes too (refunds, payment
    intents, customers...): the same key and body replay the first answer, the same key with
    another body is an `idempotency_error`. Without it, a client that timed out and retried
    (the Stripe library does, with the same key) would refund or charge twice here, where
    Stripe would not."""
    key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
    if not key:
        return await handler(request)
    body = await request.read()  # kept by aiohttp: the route reads it again
    request_print = json.dumps(["POST", request.path, body.decode("utf-8", "replace")])
    kept = store.get(f"idempotency:{key}")
    if kept is not None:
        if kept[0] != request_print:
            return _idempotency_error(key)
        return web.Response(
            status=kept[1],
            text=kept[2],
            content_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    try:
        response = await handler(request)
    except UserError as exc:
        response = exc.to_response()
    if isinstance(response, web.Response) and response.status < 500 and response.text:
        store[f"idempotency:{key}"] = (request_print, response.status, response.text)
    return response


def _idempotency_error(key: str) -> Any:
    return _body(
        {
            "error": {
                "type": "idempotency_error",
                "message": "Keys for idempotent requests can only be used with the same "
                f"parameters they were first used with. Try using a key other than '{key}' if "
                "you meant to execute a different request.",
            }
        },
        status=400,
    )


# --- The hosted invoice page (what hosted_invoice_url opens) -------------------------------------
PAGE = re.compile(r"^/i/(?P<id>in_[A-Za-z0-9]+)(?P<action>/pay)?$")


@web.middleware
async def hosted_page_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]
) -> Any:
    """The customer's page for an invoice: no API key, as at Stripe (the URL is the secret).
    It pays with the saved card or records a payment made out of band, for development."""
    found = PAGE.match(request.path)
    if not found:
        return await handler(request)
    try:
        invoice = net_invoice(found["id"])
        if found["action"] and request.method == "POST":
            form = await request.post()
            out_of_band = form.get("how") == "out_of_band"
            invoice._pay(
                origin=_origin(request),
                paid_out_of_band=out_of_band,
                payment_method=None if out_of_band else _card_on_file(invoice),
            )
            store.dump_to_disk()
            raise web.HTTPSeeOther(f"/i/{invoice.id}")
    except UserError as exc:
        message = exc.body["error"].get("message", "")
        return web.Response(status=exc.code, text=message, content_type="text/plain")
    return web.Response(text=_page_html(invoice), content_type="text/html")


def _card_on_file(invoice: NetInvoice) -> str | None:
    """The card Stripe's hosted page would offer: the default, else the latest one saved."""
    try:
        return invoice._payment_method_id(None)
    except UserError:
        cards = [
            obj.id
            for key, obj in store.items()
            if key.startswith("payment_method:") and obj.customer == invoice.customer
        ]
        return cards[-1] if cards else None


def _page_html(invoice: NetInvoice) -> str:
    def money(minor: int) -> str:
        return f"{minor / 100:,.2f} {invoice.currency.upper()}"

    lines = "".join(
        f"<tr><td>{html.escape(line.description or '')}</td><td>{money(line.amount)}</td></tr>"
        for line in invoice.lines._list
    )
    pay = (
        f'<form method="post" action="/i/{invoice.id}/pay">'
        '<button name="how" value="card">Pay with the saved card</button> '
        '<button name="how" value="out_of_band">Record a payment made elsewhere</button></form>'
        if invoice.status in ("open", "uncollectible")
        else ""
    )
    return (
        f"<!doctype html><title>Invoice {html.escape(invoice.number or invoice.id)}</title>"
        f"<h1>Invoice {html.escape(invoice.number or invoice.id)}</h1>"
        f"<p>Status: {invoice.status}. Total {money(invoice.total)}, paid "
        f"{money(invoice.amount_paid)}, still due {money(invoice.amount_remaining)}.</p>"
        f"<table>{lines}</table>{pay}"
    )


def install(app: Any) -> None:
    """Put the invoicing routes in front of localstripe's (before the app starts)."""
    app.middlewares.insert(0, hosted_page_middleware)
    app.middlewares.append(invoicing_middleware)
    app.middlewares.append(idempotency_middleware)  # localstripe's own routes, behind ours
