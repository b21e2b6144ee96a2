"""A simulated data center: configurable latency and failure rate, seeded so tests repeat,
node state and every call's result kept in the database (so they outlive a killed worker)."""

import random
import time
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..models import Node, SimulatedCall, SimulatedCluster, SimulatedNode
from . import Access, NodeAccess, PermanentDriverError, TransientDriverError
from .kubeconfig import DOMAIN, ca_certificate_create, kubeconfig_build


class SimulatedDriver:
    def _attempt(self, key: str, nodes: list[str]) -> SimulatedCall:
        """Count the attempt in its own transaction, before any work: a crash after it still
        shows that the attempt happened."""
        with transaction.atomic():
            call, _ = SimulatedCall.objects.select_for_update().get_or_create(
                key=key, defaults={"nodes": nodes}
            )
            call.attempts += 1
            call.save(update_fields=["attempts"])
        return call

    def _work(self, key: str, attempt: int) -> None:
        time.sleep(settings.PROVISIONING_SIMULATED_LATENCY)
        dice = random.Random(f"{settings.PROVISIONING_SIMULATED_SEED}:{key}:{attempt}").random()
        if dice < settings.PROVISIONING_SIMULATED_FAILURE_RATE:
            raise TransientDriverError(f"Simulated timeout talking to the fabric manager ({key}).")

    def provision(
        self, *, key: str, account: str, nodes: list[str], starts_at: datetime, ends_at: datetime
    ) -> Access:
        call = self._attempt(key, nodes)
        if call.completed_at is not None:
            return _access(call.result)
        broken = sorted(set(nodes) & set(settings.PROVISIONING_SIMULATED_BROKEN_NODES))
        if broken:
            raise PermanentDriverError(f"Nodes {', '.join(broken)} do not answer their BMC.")
        self._work(key, call.attempts)
        block = key.split(":", 1)[-1]
        result = {
            "nodes": [
                {
                    "hostname": n,
                    "ssh_host": f"{n}.ssh.{DOMAIN}",
                    "ssh_port": 22,
                    "ssh_user": "ubuntu",
                }
                for n in nodes
            ],
            "instructions": (
                f"Your block {block}: ssh ubuntu@<node>.ssh.{DOMAIN}, or use kubectl with "
                "the kubeconfig."
            ),
            "secret": _kubeconfig(block, account, nodes),
        }
        with transaction.atomic():
            locked = SimulatedCall.objects.select_for_update().get(pk=call.pk)
            if locked.completed_at is not None:  # a concurrent attempt finished first
                return _access(locked.result)
            for hostname in nodes:
                SimulatedNode.objects.update_or_create(hostname=hostname, defaults={"block": block})
            locked.result = result
            locked.completed_at = timezone.now()
            locked.completions += 1
            locked.save(update_fields=["result", "completed_at", "completions"])
        return _access(result)

    def deprovision(self, *, key: str, nodes: list[str]) -> None:
        call = self._attempt(key, nodes)
        if call.completed_at is not None:
            return
        self._work(key, call.attempts)
        with transaction.atomic():
            SimulatedNode.objects.filter(hostname__in=nodes).update(block="")
            SimulatedCall.objects.filter(pk=call.pk, completed_at__isnull=True).update(
                completed_at=timezone.now(), completions=1
            )

    def extend(self, *, key: str, nodes: list[str], ends_at: datetime) -> None:
        self._attempt(key, nodes)

    def blocks(self) -> list[str]:
        """Nothing outlives its teardown here: no leftovers to list."""
        return []

    def health(self, *, nodes: list[str]) -> dict[str, str]:
        faults = dict(
            SimulatedNode.objects.filter(hostname__in=nodes).values_list("hostname", "fault")
        )
        return {node: faults.get(node) or "ok" for node in nodes}


def _kubeconfig(block: str, account: str, nodes: list[str]) -> str:
    cluster = _cluster_name(nodes)
    return kubeconfig_build(
        block=block, cluster=cluster, account=account, ca_pem=_cluster_ca(cluster)
    )


def _cluster_name(nodes: list[str]) -> str:
    """The cluster the nodes belong to (a block's nodes are all in one)."""
    codes = set(Node.objects.filter(hostname__in=nodes).values_list("cluster__code", flat=True))
    if len(codes) != 1:
        raise PermanentDriverError(f"Nodes {', '.join(nodes)} are not in one known cluster.")
    return codes.pop()


def _cluster_ca(cluster: str) -> str:
    """The cluster's CA certificate, made the first time a block runs there and kept."""
    known = SimulatedCluster.objects.filter(name=cluster).first()
    if known is None:
        pem = ca_certificate_create(cluster, timezone.now())
        known, _ = SimulatedCluster.objects.get_or_create(
            name=cluster, defaults={"ca_certificate": pem}
        )
    return known.ca_certificate


def _access(result: dict) -> Access:
    return Access(
        nodes=[NodeAccess(**node) for node in result.get("nodes", [])],
        instructions=result.get("instructions", ""),
        secret=result.get("secret", ""),
    )
