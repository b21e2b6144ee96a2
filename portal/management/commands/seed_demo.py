import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from accounts.models import Membership, Organization, User
from accounts.permissions import Role
from backoffice import demo as backoffice_demo
from capacity import demo

DEFAULT_PASSWORD = "hyperblock-demo"  # noqa: S105 - development only; refused in production


class Command(BaseCommand):
    help = "Create (or refresh) the demo customer, organization and staff users. Idempotent."

    def handle(self, *args: object, **options: object) -> None:
        if not getattr(settings, "DEMO_DATA_ALLOWED", False):
            raise CommandError("seed_demo refuses to run with these settings (production?).")
        password = os.environ.get("DEMO_PASSWORD") or DEFAULT_PASSWORD
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
            bookings = demo.load_bookings(password)
            # The other customer was looked at by sales long ago; Demo Labs waits for review.
            Organization.objects.filter(slug="northwind", reviewed_at__isnull=True).update(
                reviewed_at=timezone.now()
            )
        self.stdout.write(self.style.SUCCESS("Demo data ready."))
        self.stdout.write(
            f"  Inventory: {nodes} GPU nodes; {bookings} new bookings by Northwind AI."
        )
        self.stdout.write(f"  Customer: demo@example.com / {password}  (organization /o/demo/)")
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
