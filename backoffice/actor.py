"""The signed-in staff member as an accounts User: the `actor` the services are given."""

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from accounts.models import User


def staff_actor(request: HttpRequest) -> User:
    """`request.user`, known to be a signed-in user (the admin site lets no one else in)."""
    user = request.user
    if not isinstance(user, User):
        raise PermissionDenied
    return user
