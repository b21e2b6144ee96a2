import re

from django.core.exceptions import ValidationError
from django.utils.text import slugify

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,38}[a-z0-9])$")
# Slugs that would be confusing in URLs or look like ours.
RESERVED_SLUGS = frozenset(
    {
        "admin", "api", "app", "billing", "console", "dashboard", "docs", "help", "hyperblock",
        "login", "logout", "new", "o", "org", "orgs", "root", "settings", "signup", "static",
        "staff", "status", "stripe", "support", "system", "www",
    }
)  # fmt: skip


def validate_org_slug(value: str) -> None:
    if not SLUG_RE.match(value):
        raise ValidationError(
            "Use 3 to 40 lower-case letters, digits or hyphens, starting and ending with a "
            "letter or digit.",
            code="invalid_slug",
        )
    if "--" in value:
        raise ValidationError("Use single hyphens only.", code="invalid_slug")
    if value in RESERVED_SLUGS:
        raise ValidationError(f"“{value}” is reserved; choose another.", code="reserved_slug")


def suggest_slug(name: str) -> str:
    slug = re.sub(r"-{2,}", "-", slugify(name))[:40].strip("-")
    return slug
