"""Errors that services raise. Views show `message`; the API maps them to its JSON error shape."""


class ServiceError(Exception):
    """A request that cannot be carried out as asked; nothing has been changed."""

    status = 400
    default_code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param


class NotAllowed(ServiceError):
    """The actor is known but their role does not allow this."""

    status = 403
    default_code = "permission_denied"


class NotFound(ServiceError):
    status = 404
    default_code = "not_found"


class Conflict(ServiceError):
    """The request was valid but the state changed under it (taken, sold out, already done)."""

    status = 409
    default_code = "conflict"
