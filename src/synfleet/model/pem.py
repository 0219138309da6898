"""The PEM files a fleet file names: nginx's certificate and key, and the CA bundle Synapse trusts
for outbound federation. Each is read and checked before anything is written or started, so a
wrong file is one message naming the key and the file, not a server that fails later."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from synfleet.errors import UsageError
from synfleet.model.schema import FleetSpec


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{key}: {path}: cannot read: {exc.strerror}") from None


def _certificates(key: str, path: str) -> list[x509.Certificate]:
    data = _read(key, path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise UsageError(f"{key}: {path}: not a PEM bundle of certificates (expected -----BEGIN CERTIFICATE-----)")
    return certificates


def names_of(certificate: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for: its subjectAltName, else its common name."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [str(name) for name in extension.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _covers(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def check_files(spec: FleetSpec) -> None:
    """Every PEM file the fleet file names can serve: before render, check and up do anything."""
    check_tls(spec)
    trusted_ca(spec)


def check_tls(spec: FleetSpec) -> None:
    """With TLS on: the certificate is PEM, is for the public host, and the key is its key."""
    tls = spec.tls
    if not tls.enabled:
        return
    leaf = _certificates("tls.certificate", tls.certificate)[0]
    names = names_of(leaf)
    if not any(_covers(name, spec.public_host) for name in names):
        raise UsageError(
            f"tls.certificate: {tls.certificate} is for {', '.join(names) or 'no DNS name'}, not for "
            f"{spec.public_host}, the host clients and servers connect to (public_baseurl, else server_name)"
        )
    try:
        key = serialization.load_pem_private_key(_read("tls.key", tls.key), password=None)
    except (ValueError, TypeError):
        raise UsageError(f"tls.key: {tls.key}: not an unencrypted PEM private key") from None
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise UsageError(f"tls.key: {tls.key} is not the key of tls.certificate {tls.certificate}")


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def trusted_ca(spec: FleetSpec) -> str | None:
    """The text of federation.trusted_ca, checked to be a PEM bundle; None when not set."""
    path = spec.federation.trusted_ca
    if not path:
        return None
    _certificates("federation.trusted_ca", path)
    return _read("federation.trusted_ca", path).decode("ascii", errors="replace")
