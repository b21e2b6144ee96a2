"""Response headers that tell browsers what the pages may load and do.

The Content Security Policy comes from CONTENT_SECURITY_POLICY (django-csp) with the Stripe
origins the current settings use added at response time, so pointing STRIPE_API_BASE at
localstripe (development, tests) or at nothing (Stripe itself) needs no second policy."""

from urllib.parse import urlsplit

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase

# What Stripe.js needs on a page with the card Element (Stripe's published requirements).
STRIPE_SOURCES = {
    "script-src": ["https://js.stripe.com", "https://*.js.stripe.com"],
    "frame-src": ["https://js.stripe.com", "https://*.js.stripe.com", "https://hooks.stripe.com"],
    "connect-src": ["https://api.stripe.com"],
    "img-src": ["https://*.stripe.com"],
}

# Nothing here uses the camera, microphone, location or payment request APIs.
PERMISSIONS_POLICY = (
    "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
    "microphone=(), payment=(), usb=()"
)


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def stripe_sources() -> dict[str, list[str]]:
    """The origins Stripe.js is loaded from and talks to, as the settings say now."""
    if not settings.STRIPE_API_BASE:
        return STRIPE_SOURCES
    # A Stripe emulator serves its Stripe.js stand-in, its API and its 3-D Secure page itself.
    emulator = sorted({origin(settings.STRIPE_API_BASE), origin(settings.STRIPE_JS_URL)})
    return {"script-src": emulator, "frame-src": emulator, "connect-src": emulator}


class SecurityHeadersMiddleware(CSPMiddleware):
    """django-csp's middleware with the Stripe origins, plus a Permissions-Policy."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        update = {key: list(value) for key, value in stripe_sources().items()}
        for key, value in (parts.update or {}).items():  # a view's own csp_update
            values = list(value) if isinstance(value, list | tuple | set) else [value]
            update[key] = [*update.get(key, []), *values]
        parts.update = update
        return parts

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        response = super().process_response(request, response)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
