from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from backoffice import demo


class Command(BaseCommand):
    help = "Print the current second-factor code of a demo staff user (development only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")

    def handle(self, *args: object, email: str, **options: object) -> None:
        if not getattr(settings, "DEMO_DATA_ALLOWED", False):
            raise CommandError("demo_totp_code refuses to run with these settings (production?).")
        user = User.objects.filter(email__iexact=email, is_staff=True).first()
        if user is None:
            raise CommandError(f"No staff user {email}. Run seed_demo first.")
        try:
            self.stdout.write(demo.current_code(user))
        except demo.TOTPDevice.DoesNotExist as exc:
            raise CommandError(f"{email} has no demo authenticator. Run seed_demo.") from exc
