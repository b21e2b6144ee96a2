import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from . import context

# An incoming X-Request-ID is kept only when it looks like one (no log injection).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestContextMiddleware:
    """Gives each request an id (echoed in X-Request-ID) and records the client address."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = rid
        rid_token = context.request_id.set(rid)
        ip_token = context.client_ip.set(request.META.get("REMOTE_ADDR") or None)
        try:
            response = self.get_response(request)
        finally:
            context.request_id.reset(rid_token)
            context.client_ip.reset(ip_token)
        response["X-Request-ID"] = rid
        return response
