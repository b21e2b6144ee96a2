"""The kubeconfig a running block gets: an API server with a valid DNS host name and a real
X.509 certificate authority per cluster, the same for every block on that cluster."""

import base64
import re
from datetime import timedelta

import pytest
import yaml
from cryptography import x509
from django.utils import timezone

from capacity import lifecycle, provisioning
from capacity.drivers.kubeconfig import api_server_host, ca_certificate_create, dns_label
from capacity.models import Reservation, SimulatedCluster
from core import crypto

from .conftest import NEXT_HOUR, hours
from .test_reservations import reserve

S = Reservation.State
pytestmark = pytest.mark.django_db
LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def is_dns_host_name(host: str) -> bool:
    """RFC 1123 host name: dot-separated labels of lowercase letters, digits and inner hyphens,
    each 1-63 characters, 253 in all."""
    return len(host) <= 253 and all(LABEL.match(label) for label in host.split("."))


def running(organization, owner, catalog, capture, **kwargs) -> Reservation:
    reservation = reserve(organization, owner, catalog, **kwargs)
    lifecycle.reservation_transition(reservation=reservation, to=S.SCHEDULED, actor=None)
    with capture(execute=True):
        provisioning.reservation_start(reservation)
    reservation.refresh_from_db()
    assert reservation.state == S.ACTIVE
    return reservation


def kubeconfig(reservation: Reservation) -> dict:
    return yaml.safe_load(crypto.decrypt(reservation.access_secret))


def test_the_kubeconfig_names_a_valid_host_and_carries_the_cluster_ca(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    first = running(organization, owner, catalog, django_capture_on_commit_callbacks, nodes=1)
    second = running(
        organization,
        owner,
        catalog,
        django_capture_on_commit_callbacks,
        nodes=1,
        start=NEXT_HOUR + hours(1),
        length=2,
    )
    assert first.cluster == second.cluster == catalog.east_a
    cas = []
    for reservation in (first, second):
        config = kubeconfig(reservation)
        assert config["current-context"] == reservation.public_id.replace("_", "-")
        [cluster] = config["clusters"]
        server = cluster["cluster"]["server"]
        host = server.removeprefix("https://").removesuffix(":6443")
        assert server == f"https://{host}:6443"
        assert host == f"{reservation.public_id.replace('_', '-')}.east-a.k8s.hyperblock.example"
        assert is_dns_host_name(host)
        pem = base64.b64decode(cluster["cluster"]["certificate-authority-data"])
        ca = x509.load_pem_x509_certificate(pem)
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert (constraints.critical, constraints.value.ca) == (True, True)
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign is True
        assert ca.not_valid_before_utc <= timezone.now() <= ca.not_valid_after_utc
        assert ca.issuer == ca.subject  # a root: self-signed
        ca.verify_directly_issued_by(ca)
        assert config["users"][0]["user"]["token"]
        cas.append(pem)
    assert cas[0] == cas[1]  # one CA per cluster, kept for every block on it
    assert SimulatedCluster.objects.get(name="east-a").ca_certificate.encode() == cas[0]
    assert (
        kubeconfig(first)["users"][0]["user"]["token"]
        != (kubeconfig(second)["users"][0]["user"]["token"])
    )


def test_another_cluster_has_its_own_ca(
    catalog, organization, owner, django_capture_on_commit_callbacks
):
    east_a = running(organization, owner, catalog, django_capture_on_commit_callbacks, nodes=4)
    east_b = running(organization, owner, catalog, django_capture_on_commit_callbacks, nodes=6)
    assert (east_a.cluster, east_b.cluster) == (catalog.east_a, catalog.east_b)
    data = [
        kubeconfig(r)["clusters"][0]["cluster"]["certificate-authority-data"]
        for r in (east_a, east_b)
    ]
    assert data[0] != data[1]
    assert sorted(SimulatedCluster.objects.values_list("name", flat=True)) == ["east-a", "east-b"]


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("rsv_ab2c", "rsv-ab2c"),
        ("East_A", "east-a"),
        ("--x..y--", "x-y"),
        ("a" * 70, "a" * 63),
    ],
)
def test_names_become_dns_labels(text, label):
    assert dns_label(text) == label
    assert LABEL.match(label)


def test_a_long_cluster_name_still_gives_a_valid_host():
    host = api_server_host("rsv_" + "z" * 14, "cluster_" + "q" * 80)
    assert is_dns_host_name(host)
    assert host.endswith(".k8s.hyperblock.example")


def test_the_ca_outlives_the_blocks_by_years():
    now = timezone.now()
    ca = x509.load_pem_x509_certificate(ca_certificate_create("east-a", now).encode())
    assert ca.not_valid_after_utc - now > timedelta(days=9 * 365)
