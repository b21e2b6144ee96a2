"""Hooks named in settings: how a lower app lets a higher one act without importing it.

`PROVISIONING_DRIVER` works this way too. A hook's setting holds a dotted path; the function is
looked up when called (a dictionary lookup once its module is loaded), so no app reaches upward
at import time and the edge is in one place (portal/settings/base.py) for a reader to see.
"""

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string


def hook(setting: str) -> Callable[..., Any]:
    """The function the setting `setting` names."""
    function: Callable[..., Any] = import_string(getattr(settings, setting))
    return function
