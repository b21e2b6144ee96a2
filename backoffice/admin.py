"""The staff site's pages, registered by audience: Django's admin autodiscovers this module."""

from . import accounts_admin, audit_log, finance, sales  # noqa: F401
from .operations import catalog, incidents, inventory, reservations  # noqa: F401
