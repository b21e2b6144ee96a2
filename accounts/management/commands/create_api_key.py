from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.api_keys import SCOPES, api_key_create_for_operator
from accounts.models import Organization, User
from core.errors import ServiceError


class Command(BaseCommand):
    help = "Create an API key for an organization and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="the organization's slug")
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            choices=sorted(SCOPES),
            help="repeat for several; default: reservations:read",
        )
        parser.add_argument(
            "--user",
            metavar="EMAIL",
            help="the member the key acts for (needed for reservations:write and keys:write); "
            "the key carries only scopes that member's role allows",
        )

    def handle(self, *args: Any, **options: Any) -> None:  # argparse's values
        organization = Organization.objects.filter(slug=options["org"]).first()
        if organization is None:
            raise CommandError(f"No organization with the slug {options['org']!r}.")
        user = None
        if options["user"]:
            user = User.objects.filter(email__iexact=options["user"].strip()).first()
            if user is None:
                raise CommandError(f"No user with the e-mail address {options['user']!r}.")
        try:
            api_key, key = api_key_create_for_operator(
                organization=organization,
                name=options["name"],
                scopes=options["scopes"] or ["reservations:read"],
                user=user,
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        acts_for = f", acting for {user.email}" if user else ""
        self.stderr.write(
            f"Key {api_key.public_id} for {organization.slug}{acts_for} with "
            f"{', '.join(api_key.scopes)}. "
            "It is shown once; store it now."
        )
        self.stdout.write(key)
