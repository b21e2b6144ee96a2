import ipaddress
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse

from . import context

# An incoming X-Request-ID is kept only when it looks like one (no log injection).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def client_address(request: HttpRequest) -> str | None:
    """Who sent the request. Behind TRUSTED_PROXY_HOPS proxies (a load balancer: 1), the address
    the nearest of them saw in X-Forwarded-For; entries further left are the client's own word
    and could be anything, so they are never taken."""
    hops = settings.TRUSTED_PROXY_HOPS
    if hops:
        forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",")]
        forwarded = [a for a in forwarded if a]
        if len(forwarded) >= hops:
            candidate = forwarded[-hops]
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                return None
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    """Gives each request an id (echoed in X-Request-ID) and records the client address."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        rid_token = context.request_id.set(rid)
        ip_token = context.client_ip.set(client_address(request))
        try:
            response = self.get_response(request)
        finally:
            context.request_id.reset(rid_token)
            context.client_ip.reset(ip_token)
        response["X-Request-ID"] = rid
        return response


class SessionTimeoutMiddleware:
    """Signs a user out after SESSION_IDLE_TIMEOUT without a request, and in any case
    SESSION_ABSOLUTE_TIMEOUT after the session began, whatever the activity.

    The last activity is written at most once a minute, so a page polling every few seconds
    does not rewrite the session on every request. A timed-out request goes on as an anonymous
    one: pages that need a user send it to the sign-in page, the API answers 401."""

    STARTED = "session_started_at"
    SEEN = "session_seen_at"
    WRITE_EVERY = 60  # seconds

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            self._check(request)
        return self.get_response(request)

    @classmethod
    def start(cls, sender: object, request: HttpRequest, **kwargs: object) -> None:
        """Start the clocks at sign-in (connected to `user_logged_in`)."""
        request.session[cls.STARTED] = request.session[cls.SEEN] = time.time()

    def _check(self, request: HttpRequest) -> None:
        session = request.session
        now = time.time()
        started = session.get(self.STARTED)
        seen = session.get(self.SEEN)
        if not isinstance(started, int | float) or not isinstance(seen, int | float):
            # A session signed in before these clocks existed: they start now.
            session[self.STARTED] = session[self.SEEN] = now
            return
        idle = settings.SESSION_IDLE_TIMEOUT.total_seconds()
        absolute = settings.SESSION_ABSOLUTE_TIMEOUT.total_seconds()
        if now - seen > idle or now - started > absolute:
            why = (
                f"{int(idle // 60)} minutes without activity"
                if now - seen > idle
                else f"{int(absolute // 3600)} hours"
            )
            logout(request)
            messages.info(request, f"You were signed out after {why}. Sign in again.")
            return
        if now - seen >= self.WRITE_EVERY:
            session[self.SEEN] = now
