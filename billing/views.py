import contextlib
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.decorators import (
    MemberRequest,
    ask_for_password,
    org_member,
    recent_password,
    recently_reauthenticated,
)
from accounts.permissions import Permission, can
from capacity import cancellation as capacity_cancellation
from capacity import extensions as capacity_extensions
from capacity import selectors as capacity_selectors
from capacity.forms import ExtendForm
from capacity.models import Extension, Reservation
from core.dates import format_datetime
from core.errors import ServiceError
from core.forms import add_service_error

from . import gateway, selectors, webhooks
from .models import BillingAccount, Payment
from .services import accounts, cards, extensions, payments

logger = logging.getLogger(__name__)


# --- Stripe webhooks ---------------------------------------------------------------------
@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    signature = request.headers.get("Stripe-Signature", "")
    if not signature:
        return JsonResponse({"error": "Missing Stripe-Signature header."}, status=400)
    try:
        _event, created = webhooks.webhook_receive(request.body, signature)
    except gateway.WebhookSignatureError:
        return JsonResponse({"error": "Invalid signature."}, status=400)
    except webhooks.BadEvent as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"received": True, "duplicate": not created})


# --- Paying for a reservation -------------------------------------------------------------
def _reservation(request: MemberRequest, public_id: str) -> Reservation | None:
    return capacity_selectors.reservation_for_org(request.organization, public_id)


def _may_pay(request: MemberRequest) -> bool:
    role = request.membership.role
    return can(role, Permission.MANAGE_BILLING) or can(role, Permission.MANAGE_RESERVATIONS)


def _attempt() -> str:
    return secrets.token_urlsafe(24)


@org_member(Permission.VIEW_RESERVATIONS)
@require_GET
def pay(request: MemberRequest, public_id: str) -> HttpResponse:
    reservation = _reservation(request, public_id)
    if reservation is None:
        return render(request, "404.html", status=404)
    return _pay_page(request, reservation, None)


def _pay_page(
    request: MemberRequest, reservation: Reservation, extension: Extension | None
) -> HttpResponse:
    """The card page for a held reservation, or for one of its held extensions (the saved card
    is offered for the reservation only; an extension asks for it on its own confirm page)."""
    detail = reverse("reservation-detail", args=[request.organization.slug, reservation.public_id])
    if not _may_pay(request):
        message = "Your role cannot pay for reservations."
        return render(request, "403.html", {"message": message}, status=403)
    held = (
        extension.state == Extension.State.HELD
        if extension
        else (reservation.state == Reservation.State.HELD)
    )
    if not held:
        return redirect(detail)
    payments_of = extension.payments if extension else reservation.payments
    waiting = payments_of.filter(status=Payment.Status.REQUIRES_ACTION).first()
    saved = None
    try:
        if waiting is not None:
            secret, mode = payments.client_secret_for_payment(waiting), "action"
        else:
            payments.card_form_check(
                reservation=reservation, actor=request.user, extension=extension
            )
            secret, mode = "", "payment"
        if extension is None:
            saved = cards.default_card_for_account(
                accounts.billing_account_ensure(request.organization)
            )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect(detail)
    return render(
        request,
        "billing/pay.html",
        {
            "reservation": reservation,
            "extension": extension,
            "mode": mode,
            "client_secret": secret,
            "waiting": waiting,
            "attempt": _attempt(),
            "last_failure": payments_of.filter(status=Payment.Status.FAILED).first(),
            "saved_card": saved,
            "stripe_js_url": settings.STRIPE_JS_URL,
            "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
            "may_save_card": can(request.membership.role, Permission.MANAGE_BILLING),
            "now": timezone.now(),
            **_refund_terms(reservation, extension),
        },
    )


def _refund_terms(reservation: Reservation, extension: Extension | None) -> dict[str, object]:
    """What the refund policy is worked out on: the block's start, and what it will hold once
    this payment succeeds (an extension adds its price to what was paid before)."""
    if extension is None:
        paid = reservation.total
    else:
        paid = capacity_cancellation.settled_money(reservation) + extension.price
    return {
        "refund_starts_at": reservation.starts_at,
        "refund_paid": paid,
        "refund_currency": reservation.currency,
        "refund_started": reservation.state not in capacity_cancellation.CANCELABLE
        or reservation.starts_at <= timezone.now(),
    }


def _payment_answer(
    request: MemberRequest, reservation: Reservation, payment: Payment
) -> JsonResponse:
    slug = request.organization.slug
    if payment.status == Payment.Status.SUCCEEDED:
        messages.success(
            request,
            "Payment received. The reservation is extended."
            if payment.extension_id
            else "Payment received. Your reservation is confirmed.",
        )
        return JsonResponse(
            {
                "status": "succeeded",
                "redirect": reverse("reservation-detail", args=[slug, reservation.public_id]),
            }
        )
    if payment.status == Payment.Status.REQUIRES_ACTION:
        return JsonResponse(
            {
                "status": "requires_action",
                "client_secret": payments.client_secret_for_payment(payment),
                "status_url": reverse("payment-status", args=[slug, payment.public_id]),
            }
        )
    return JsonResponse(
        {
            "status": payment.status,
            "status_url": reverse("payment-status", args=[slug, payment.public_id]),
        }
    )


@org_member(Permission.VIEW_RESERVATIONS)
@require_POST
def pay_card(request: MemberRequest, public_id: str) -> JsonResponse:
    """The card form posts here once Stripe.js has collected the card: charge it."""
    reservation = _reservation(request, public_id)
    if reservation is None:
        return JsonResponse({"error": "No such reservation."}, status=404)
    try:
        payment = payments.payment_by_card_create(
            reservation=reservation,
            actor=request.user,
            payment_method_id=request.POST.get("payment_method", ""),
            attempt_token=request.POST.get("attempt", ""),
            keep_card=request.POST.get("make_default") == "on",
        )
    except ServiceError as exc:
        return _payment_refused(request, reservation, exc)
    return _payment_answer(request, reservation, payment)


def _payment_refused(
    request: MemberRequest, reservation: Reservation, exc: ServiceError
) -> JsonResponse:
    """A card payment that did not go through: the message and code for the page (which says
    it in its own words), the details for the log, and a fresh attempt for the next try."""
    decline = getattr(exc, "decline_code", "")
    logger.info(
        "card payment refused for %s: %s (code %s%s)",
        reservation.public_id,
        exc.message,
        exc.code,
        f", decline {decline}" if decline else "",
    )
    body = {"error": exc.message, "code": exc.code, "attempt": _attempt()}
    if decline:
        body["decline_code"] = decline
    return JsonResponse(body, status=exc.status)


@org_member(Permission.VIEW_RESERVATIONS)
@require_POST
def pay_saved(request: MemberRequest, public_id: str) -> HttpResponse:
    reservation = _reservation(request, public_id)
    if reservation is None:
        return render(request, "404.html", status=404)
    slug = request.organization.slug
    try:
        payment = payments.payment_by_saved_card_create(
            reservation=reservation,
            actor=request.user,
            attempt_token=request.POST.get("attempt", ""),
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("pay", slug=slug, public_id=public_id)
    if payment.status == Payment.Status.REQUIRES_ACTION:
        messages.warning(request, "Your bank wants to confirm this payment. Finish it below.")
        return redirect("pay", slug=slug, public_id=public_id)
    if payment.status == Payment.Status.SUCCEEDED:
        messages.success(request, "Paid with your saved card. The reservation is confirmed.")
    return redirect("reservation-detail", slug=slug, public_id=public_id)


@org_member(Permission.VIEW_RESERVATIONS)
@require_GET
def payment_status(request: MemberRequest, payment_id: str) -> HttpResponse:
    """htmx: the payment as Stripe sees it now; the page polls this after confirming a card."""
    payment = selectors.payment_for_org(request.organization, payment_id)
    if payment is None:
        return render(request, "404.html", status=404)
    if payment.stripe_payment_intent_id and payment.status not in Payment.RECEIVED:
        try:
            payment = (
                payments.payment_sync(payment_intent_id=payment.stripe_payment_intent_id) or payment
            )
        except gateway.PaymentError as exc:
            logger.warning("payment status check failed: %s", exc.message)
    settled = payment.status in (*Payment.RECEIVED, Payment.Status.FAILED)
    response = render(
        request,
        "billing/_payment_status.html",
        {"payment": payment, "polling": not settled},
    )
    if payment.status == Payment.Status.SUCCEEDED and request.htmx:
        response["HX-Redirect"] = reverse(
            "reservation-detail", args=[request.organization.slug, payment.reservation.public_id]
        )
    return response


# --- Extending a reservation ---------------------------------------------------------------
def _extension_quote(
    reservation: Reservation, form: ExtendForm
) -> capacity_extensions.ExtensionQuote | None:
    if not form.is_valid():
        return None
    try:
        return capacity_extensions.extension_quote(
            reservation=reservation, hours=form.cleaned_data["hours"]
        )
    except ServiceError as exc:
        add_service_error(form, exc)
        return None


@org_member(Permission.MANAGE_RESERVATIONS)
@require_http_methods(["GET", "POST"])
def reservation_extend(request: MemberRequest, public_id: str) -> HttpResponse:
    """GET: the price of the extra hours (an htmx partial beside the form, or a confirm page).
    POST: hold them and pay, with the saved card or on the payment page. The end moves only
    once the payment has succeeded."""
    reservation = _reservation(request, public_id)
    if reservation is None:
        return render(request, "404.html", status=404)
    slug = request.organization.slug
    form = ExtendForm(request.POST if request.method == "POST" else request.GET or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        collect = extensions.SAVED_CARD if request.POST.get("pay") == "saved" else "pay_page"
        try:
            started = extensions.extension_start(
                reservation=reservation,
                actor=request.user,
                hours=form.cleaned_data["hours"],
                attempt_token=request.POST.get("attempt", ""),
                collect=collect,
            )
        except ServiceError as exc:
            add_service_error(form, exc)
            status = exc.status
        else:
            extension, payment = started.extension, started.payment
            if started.invoice is not None:
                return _extension_invoiced(request, started)
            if extension.state == Extension.State.PAID:
                messages.success(
                    request,
                    f"Paid {extension.price:.2f} {extension.currency.upper()} with your saved "
                    f"card. The reservation now ends {format_datetime(extension.ends_at)}.",
                )
                return redirect("reservation-detail", slug=slug, public_id=public_id)
            if payment is not None and payment.status == Payment.Status.REQUIRES_ACTION:
                messages.warning(request, "Your bank wants to confirm this payment. Finish it.")
            return redirect(
                "extension-pay", slug=slug, public_id=public_id, extension_id=extension.public_id
            )
    elif request.method == "POST":
        status = 400
    quote = _extension_quote(reservation, form)
    context = {
        "reservation": reservation,
        "form": form,
        "quote": quote,
        "saved_card": None,
        "attempt": _attempt(),
        "invoiced": request.organization.on_invoice_terms,
    }
    if request.htmx and request.htmx.target == "extend-quote":
        return render(request, "billing/_extension_quote.html", context)
    account = BillingAccount.objects.filter(organization=request.organization).first()
    if account is not None and account.default_payment_method_id:
        with contextlib.suppress(gateway.PaymentError):  # Stripe away: pay on the next page
            context["saved_card"] = cards.default_card_for_account(account)
    return render(request, "billing/extend.html", context, status=status)


def _extension_invoiced(
    request: MemberRequest, started: extensions.ExtensionStarted
) -> HttpResponse:
    """Invoice terms: the extension is applied once its invoice is issued (Stripe away: later)."""
    extension, invoice = started.extension, started.invoice
    assert invoice is not None
    if extension.state == Extension.State.PAID:
        messages.success(
            request,
            f"Extended by {extension.hours} h: invoice "
            f"{invoice.number or invoice.stripe_invoice_id} for {extension.price:.2f} "
            f"{extension.currency.upper()} is on your terms. The reservation now ends "
            f"{format_datetime(extension.ends_at)}.",
        )
    elif extension.state == Extension.State.HELD:
        messages.warning(
            request,
            f"The extra {extension.hours} h are held for you while the invoice is being created; "
            "the reservation's end moves as soon as it is issued.",
        )
    else:
        messages.error(request, "The extension could not be applied; nothing was charged.")
    return redirect(
        "reservation-detail",
        slug=request.organization.slug,
        public_id=extension.reservation.public_id,
    )


def _extension(reservation: Reservation, extension_id: str) -> Extension | None:
    return reservation.extensions.filter(public_id=extension_id).first()


@org_member(Permission.VIEW_RESERVATIONS)
@require_GET
def extension_pay(request: MemberRequest, public_id: str, extension_id: str) -> HttpResponse:
    """The payment page for an extension's hours (the card Element, 3-D Secure)."""
    reservation = _reservation(request, public_id)
    extension = _extension(reservation, extension_id) if reservation else None
    if reservation is None or extension is None:
        return render(request, "404.html", status=404)
    return _pay_page(request, reservation, extension)


@org_member(Permission.VIEW_RESERVATIONS)
@require_POST
def extension_pay_card(request: MemberRequest, public_id: str, extension_id: str) -> JsonResponse:
    """The extension's card form posts here once Stripe.js has collected the card."""
    reservation = _reservation(request, public_id)
    extension = _extension(reservation, extension_id) if reservation else None
    if reservation is None or extension is None:
        return JsonResponse({"error": "No such extension."}, status=404)
    try:
        payment = payments.payment_by_card_create(
            reservation=reservation,
            actor=request.user,
            payment_method_id=request.POST.get("payment_method", ""),
            attempt_token=request.POST.get("attempt", ""),
            keep_card=request.POST.get("make_default") == "on",
            extension=extension,
        )
    except ServiceError as exc:
        return _payment_refused(request, reservation, exc)
    return _payment_answer(request, reservation, payment)


# --- Billing page ------------------------------------------------------------------------
@org_member(Permission.VIEW_BILLING)
@require_GET
def billing(request: MemberRequest) -> HttpResponse:
    organization = request.organization
    account = BillingAccount.objects.filter(organization=organization).first()
    card_list, card_error = [], ""
    if account is not None:
        try:
            card_list = cards.cards_for_account(account)
        except gateway.PaymentError as exc:
            card_error = exc.message
    return render(
        request,
        "billing/billing.html",
        {
            "cards": card_list,
            "card_error": card_error,
            "payments": selectors.payments_for_org(organization)[:50],
            "refunds": selectors.refunds_for_org(organization)[:50],
            "invoices": selectors.invoices_for_org(organization)[:50],
            "balance": selectors.balance_for_org(organization),
            "may_manage": can(request.membership.role, Permission.MANAGE_BILLING),
            "may_edit_organization": can(request.membership.role, Permission.MANAGE_ORGANIZATION),
        },
    )


@org_member(Permission.MANAGE_BILLING)
@require_http_methods(["GET", "POST"])
def card_add(request: MemberRequest) -> HttpResponse:
    """Save a card with a SetupIntent and the card Element (confirmCardSetup). The password is
    asked before the SetupIntent is made; the POST that records it finishes that same setup."""
    if request.method == "GET" and not recently_reauthenticated(request):
        return ask_for_password(request, request.get_full_path())
    if request.method == "POST":
        try:
            cards.card_setup_finish(
                organization=request.organization,
                actor=request.user,
                setup_intent_id=request.POST.get("setup_intent", ""),
            )
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, "Card saved. It is now the default for payments.")
        return redirect("billing", slug=request.organization.slug)
    try:
        client_secret = cards.card_setup_start(
            organization=request.organization, actor=request.user
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("billing", slug=request.organization.slug)
    return render(
        request,
        "billing/card_add.html",
        {
            "client_secret": client_secret,
            "stripe_js_url": settings.STRIPE_JS_URL,
            "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
        },
    )


def _card_change(
    request: MemberRequest,
    change: Callable[..., object],
    payment_method_id: str,
    done: str,
) -> HttpResponse:
    try:
        change(
            organization=request.organization,
            actor=request.user,
            payment_method_id=payment_method_id,
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, done)
    return redirect("billing", slug=request.organization.slug)


def _is_our_card(request: MemberRequest, payment_method_id: str) -> bool:
    try:
        return cards.is_organizations_card(request.organization, payment_method_id)
    except gateway.PaymentError:
        return True  # Stripe cannot tell now; the change checks again and says what failed


@org_member(Permission.MANAGE_BILLING)
@require_POST
@recent_password("billing", find=_is_our_card)
def card_default(request: MemberRequest, payment_method_id: str) -> HttpResponse:
    return _card_change(
        request, cards.card_make_default, payment_method_id, "Default card changed."
    )


@org_member(Permission.MANAGE_BILLING)
@require_POST
@recent_password("billing", find=_is_our_card)
def card_remove(request: MemberRequest, payment_method_id: str) -> HttpResponse:
    return _card_change(request, cards.card_remove, payment_method_id, "Card removed.")


@org_member(Permission.VIEW_BILLING)
@require_GET
def receipt(request: MemberRequest, payment_id: str) -> HttpResponse:
    payment = selectors.payment_for_org(request.organization, payment_id)
    if payment is None or payment.status != Payment.Status.SUCCEEDED:
        return render(request, "404.html", status=404)
    response = render(
        request,
        "billing/receipt.html",
        {
            "payment": payment,
            "reservation": payment.reservation,
            # An extension's payment is receipted for the extension's hours only.
            "lines": (payment.extension or payment.reservation).price_lines,
            "refunds": payment.refunds.all(),
        },
    )
    if request.GET.get("download"):
        response["Content-Disposition"] = (
            f'attachment; filename="hyperblock-receipt-{payment.public_id}.html"'
        )
    return response


@org_member(Permission.VIEW_USAGE)
@require_GET
def usage(request: MemberRequest) -> HttpResponse:
    """Tokens and spend per day and model (an SVG bar chart), and per key, for 30 days."""
    since = timezone.now() - timedelta(days=30)
    rows = selectors.usage_by_day_for_org(request.organization, since)
    by_day: dict = {}
    for row in rows:
        by_day.setdefault(row["hour__date"], []).append(row)
    peak = max((sum(r["cost"] for r in day) for day in by_day.values()), default=Decimal(0))
    days = []
    for index, (day, models) in enumerate(sorted(by_day.items())):
        total = sum(r["cost"] for r in models)
        height = int(160 * total / peak) if peak else 0
        days.append(
            {
                "date": day,
                "total": total,
                "models": models,
                "x": index * 22,
                "height": height,
                "y": 170 - height,
                "tokens": sum(r["input_tokens"] + r["output_tokens"] for r in models),
            }
        )
    per_key = selectors.usage_by_key_for_org(request.organization, since)
    return render(
        request,
        "billing/usage.html",
        {"days": days, "per_key": per_key, "rows": rows, "width": max(22 * len(days), 22)},
    )
