"""Kubeconfigs for the simulated data center: a valid DNS name for each block's API server and
a real X.509 certificate authority per cluster, so kubectl and any TLS client can check the
server it talks to."""

import base64
import re
import secrets
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DOMAIN = "hyperblock.example"
CA_VALIDITY = timedelta(days=10 * 365)


def dns_label(text: str) -> str:
    """One DNS label from any name: lowercase letters, digits and inner hyphens, at most 63
    characters ("rsv_ab12" -> "rsv-ab12", "East_A" -> "east-a")."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:63].strip("-")
    if not label:
        raise ValueError(f"{text!r} gives no DNS label")
    return label


def api_server_host(block: str, cluster: str) -> str:
    """The block's Kubernetes API server: rsv-ab12.east-a.k8s.hyperblock.example."""
    return f"{dns_label(block)}.{dns_label(cluster)}.k8s.{DOMAIN}"


def ca_certificate_create(cluster: str, now: datetime) -> str:
    """A self-signed CA certificate (PEM) for a cluster's API servers. The private key signs
    the servers' certificates inside the simulated fabric and is not kept here."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hyperblock"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{dns_label(cluster)} cluster CA"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def kubeconfig_build(*, block: str, cluster: str, account: str, ca_pem: str) -> str:
    """The kubeconfig for one block: its API server, the cluster's CA, a fresh bearer token."""
    host = api_server_host(block, cluster)
    ca_data = base64.b64encode(ca_pem.encode()).decode()
    token = secrets.token_urlsafe(32)
    name = dns_label(block)
    user = dns_label(account)
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {name}\n"
        "  cluster:\n"
        f"    server: https://{host}:6443\n"
        f"    certificate-authority-data: {ca_data}\n"
        "users:\n"
        f"- name: {user}\n"
        "  user:\n"
        f"    token: {token}\n"
        "contexts:\n"
        f"- name: {name}\n"
        "  context:\n"
        f"    cluster: {name}\n"
        f"    user: {user}\n"
        f"current-context: {name}\n"
    )
