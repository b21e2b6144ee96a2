"""Provisioning drivers: one small protocol, chosen by the PROVISIONING_DRIVER setting."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string


class DriverError(Exception):
    """The driver could not do it."""


class TransientDriverError(DriverError):
    """Worth retrying: a timeout, the controller unreachable, a busy node."""


class PermanentDriverError(DriverError):
    """Retrying will not help: an unknown node, capacity the backend refuses."""


class ConfigurationDriverError(TransientDriverError):
    """The backend refused us for our own configuration (permissions, accounting): every block
    would fail alike, so it is retried while operations fix it, with an incident."""


class MissingBlockError(PermanentDriverError):
    """The running block is gone from the backend (deleted behind our back, purged after its
    end): the caller may make it again with `provision`."""


@dataclass(frozen=True)
class NodeAccess:
    hostname: str
    ssh_host: str
    ssh_port: int
    ssh_user: str


@dataclass(frozen=True)
class Access:
    """How the customer reaches the block. `secret` (a kubeconfig with its token) is stored
    encrypted; the rest is shown as it is."""

    nodes: list[NodeAccess] = field(default_factory=list)
    instructions: str = ""
    secret: str = ""


class Driver(Protocol):
    def provision(
        self, *, key: str, account: str, nodes: list[str], starts_at: datetime, ends_at: datetime
    ) -> Access:
        """Bring the nodes up for the block. Idempotent per `key`: a second call with the same
        key returns the first result without doing the work again."""

    def deprovision(self, *, key: str, nodes: list[str]) -> None:
        """Tear the block down. Idempotent: tearing down what is gone is done."""

    def extend(self, *, key: str, nodes: list[str], ends_at: datetime) -> None:
        """Make the running block match `nodes` and `ends_at` (an extension, a node swapped
        out of it). Idempotent: a block that already matches is done."""

    def health(self, *, nodes: list[str]) -> dict[str, str]:
        """Each node's state: "ok", or why it is not."""

    # Optional (looked up with getattr):
    # describe(*, key, account, nodes, starts_at, ends_at) -> Access: the access details for a
    #   block's current nodes and window, without changing anything (after a swap/extension).
    # blocks() -> list[str]: the public ids of the blocks the backend holds, so reconcile can
    #   tear down those whose reservation has finished.


def get_driver() -> Driver:
    return import_string(settings.PROVISIONING_DRIVER)()
