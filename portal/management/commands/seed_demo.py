import logging
import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from accounts.models import Membership, Organization, User
from accounts.permissions import Role
from backoffice import demo as backoffice_demo
from billing import demo as billing_demo
from billing import gateway
from capacity import demo

DEFAULT_PASSWORD = "hyperblock-demo"  # noqa: S105 - development only; refused in production


class Command(BaseCommand):
    help = "Create (or refresh) the demo customer, organization and staff users. Idempotent."

    def handle(self, *args: object, **options: object) -> None:
        if not getattr(settings, "DEMO_DATA_ALLOWED", False):
            raise CommandError("seed_demo refuses to run with these settings (production?).")
        password = os.environ.get("DEMO_PASSWORD") or DEFAULT_PASSWORD
        # A line per Stripe request would bury the summary below (one invoice is four).
        logging.getLogger("stripe").setLevel(logging.WARNING)
        # Northwind AI is the invoice-terms customer when Stripe can issue its invoices.
        no_invoicing = billing_demo.invoicing_unavailable()
        with transaction.atomic():
            customer = self._user("demo@example.com", "Dana Demo", password)
            organization, _ = Organization.objects.update_or_create(
                slug="demo",
                defaults={
                    "name": "Demo Labs",
                    "legal_name": "Demo Labs, Inc.",
                    "country": "US",
                    "billing_email": "billing@example.com",
                    "address": "1 Demo Way\nSan Francisco, CA 94105",
                },
            )
            Membership.objects.update_or_create(
                user=customer, organization=organization, defaults={"role": Role.OWNER}
            )
            staff = backoffice_demo.load_staff(password, self._user)
            nodes = demo.load_catalog()
            northwind = demo.northwind_ensure(password)
            if not no_invoicing:
                sales = next(user for user, _ in staff if user.email == "sales@example.com")
                billing_demo.invoice_terms_ensure(organization=northwind, actor=sales)
            bookings = demo.load_bookings(password)
            # The other customer was looked at by sales long ago; Demo Labs waits for review.
            Organization.objects.filter(slug="northwind", reviewed_at__isnull=True).update(
                reviewed_at=timezone.now()
            )
        northwind.refresh_from_db()
        invoiced: dict[str, int] = {}
        if not no_invoicing:
            try:
                invoiced = billing_demo.invoices_settle(organization=northwind)
            except gateway.GatewayUnavailable as exc:
                # Committed above; billing's settlement sweep issues the rest once Stripe answers.
                no_invoicing = f"Stripe stopped answering ({exc.message})"
        self.stdout.write(self.style.SUCCESS("Demo data ready."))
        self.stdout.write(
            f"  Inventory: {nodes} GPU nodes; {bookings} new bookings by Northwind AI."
        )
        self.stdout.write(f"  Customer: demo@example.com / {password}  (organization /o/demo/)")
        if northwind.on_invoice_terms:
            counts = ", ".join(f"{n} {status}" for status, n in sorted(invoiced.items()))
            self.stdout.write(
                f"  Invoice terms: {demo.NORTHWIND_USER} / {password}  (organization "
                f"/o/northwind/, {northwind.payment_terms_text}; invoices at Stripe: "
                f"{counts or 'none'})"
            )
        if no_invoicing:
            self.stdout.write(
                f"  Skipped invoices: {no_invoicing}; Northwind AI's bookings are confirmed "
                "without one."
                if not northwind.on_invoice_terms
                else f"  Skipped invoices: {no_invoicing}; billing's settlement sweep issues "
                "Northwind AI's once Stripe answers."
            )
        for user, key in staff:
            groups = ", ".join(user.groups.values_list("name", flat=True)) or "superuser"
            self.stdout.write(f"  Staff:    {user.email} / {password}  ({groups}; TOTP key {key})")
        if settings.STAFF_OTP_REQUIRED:
            self.stdout.write(
                "  Staff sign in at /admin/ with a code from an authenticator app: add the TOTP\n"
                "  key above to the app, or print the current code with\n"
                "  `.venv/bin/python manage.py demo_totp_code sales@example.com`.\n"
                "  STAFF_OTP_REQUIRED=false turns the second factor off in development."
            )

    def _user(
        self, email: str, name: str, password: str, *, staff: bool = False, superuser: bool = False
    ) -> User:
        user = User.objects.filter(email=email).first() or User(email=email)
        user.full_name = name
        user.is_staff = staff
        user.is_superuser = superuser
        user.email_verified_at = user.email_verified_at or timezone.now()
        user.set_password(password)
        user.save()
        return user
