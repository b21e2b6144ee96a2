from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.api_keys import SCOPES, api_key_create_for_operator
from accounts.models import Organization
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

    def handle(self, *args: Any, **options: Any) -> None:  # argparse's values
        organization = Organization.objects.filter(slug=options["org"]).first()
        if organization is None:
            raise CommandError(f"No organization with the slug {options['org']!r}.")
        try:
            api_key, key = api_key_create_for_operator(
                organization=organization,
                name=options["name"],
                scopes=options["scopes"] or ["reservations:read"],
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(
            f"Key {api_key.public_id} for {organization.slug} with {', '.join(api_key.scopes)}. "
            "It is shown once; store it now."
        )
        self.stdout.write(key)
