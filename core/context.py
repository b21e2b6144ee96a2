"""Per-request context (request id, client address) readable from logs, audit and tasks."""

from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")
client_ip: ContextVar[str | None] = ContextVar("client_ip", default=None)
