"""Where a `next=` value may send the browser: back to a page of this site, never elsewhere.

Every view that follows a `next` reads it through `safe_next`, so a link crafted to bounce a
signed-in customer to another site (an open redirect, the first step of much phishing) lands
on the default page instead."""

from django.http import HttpRequest
from django.utils.http import url_has_allowed_host_and_scheme


def safe_next(request: HttpRequest, default: str) -> str:
    """The request's `next` (the form's, else the query's) if it is a path on this site, over
    HTTPS when the request came that way; else `default`.

    Only paths are taken: `redirect()` would read a bare word as a URL name, and a scheme or
    host (`https://…`, `//…`, `/\\…`) points away from here."""
    for candidate in (request.POST.get("next"), request.GET.get("next")):
        if (
            candidate
            and candidate.startswith("/")
            and url_has_allowed_host_and_scheme(
                candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
            )
        ):
            return candidate
    return default
