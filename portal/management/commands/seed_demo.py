import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from accounts.models import Membership, Organization, User
from accounts.permissions import Role
from capacity import demo

DEFAULT_PASSWORD = "hyperblock-demo"  # noqa: S105 - development only; refused in production
STAFF = [
    ("sales@example.com", "Sam Sales", False),
    ("ops@example.com", "Olive Operations", False),
    ("finance@example.com", "Fin Finance", False),
    ("admin@example.com", "Ada Admin", True),
]


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
            for email, name, superuser in STAFF:
                self._user(email, name, password, staff=True, superuser=superuser)
            nodes = demo.load_catalog()
            bookings = demo.load_bookings(password)
        self.stdout.write(self.style.SUCCESS("Demo data ready."))
        self.stdout.write(
            f"  Inventory: {nodes} GPU nodes; {bookings} new bookings by Northwind AI."
        )
        self.stdout.write(f"  Customer: demo@example.com / {password}  (organization /o/demo/)")
        for email, _name, superuser in STAFF:
            note = "  superuser" if superuser else ""
            self.stdout.write(f"  Staff:    {email} / {password}{note}")

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
