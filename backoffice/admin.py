"""The staff site's pages, registered by audience: Django's admin autodiscovers this module."""

from . import accounts_admin, audit_log, finance, operations  # noqa: F401
from .sales import organizations, rates  # noqa: F401
