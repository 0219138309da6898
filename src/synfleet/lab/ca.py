"""A private certificate authority for a lab: one CA certificate that every host trusts, and server
certificates it issues for host names (e.g. a Synapse federation listener's ``tls_certificate_path``).

Keys are ECDSA P-256: quick to make, accepted by OpenSSL, Twisted and Synapse. Certificates carry what a
strict verifier (OpenSSL's X509_STRICT, Python 3.13's default) asks for: subjectAltName, key identifiers,
key usage, and the serverAuth extended key usage on server certificates. Files are written whole (a
temporary file renamed into place): certificates mode 0644, so an unprivileged account that runs a server
can read them, keys mode 0600. Whoever else must read them also needs to be able to enter the directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from synfleet.lab.errors import LabError

CA_CERTIFICATE = "ca.pem"
CA_KEY = "ca.key"
CERTIFICATE_MODE = 0o644
KEY_MODE = 0o600
#: Certificates start this long before they are made, so a clock a little behind still accepts them.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA whose certificate is ``directory/ca.pem`` and key ``directory/ca.key``."""

    directory: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_path(self) -> Path:
        """The CA certificate: the only trust anchor a lab host's clients need (``cafile=``)."""
        return self.directory / CA_CERTIFICATE

    @classmethod
    def create(
        cls,
        directory: Path | str,
        common_name: str = "synfleet lab CA",
        valid_for: datetime.timedelta = datetime.timedelta(days=30),
    ) -> CertificateAuthority:
        """Make a new CA in ``directory`` (created if missing): ``ca.pem`` and ``ca.key``."""
        directory = Path(directory)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(certificate_signing=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        _write(directory / CA_KEY, _key_pem(key), KEY_MODE)
        _write(directory / CA_CERTIFICATE, certificate.public_bytes(serialization.Encoding.PEM), CERTIFICATE_MODE)
        return cls(directory, certificate, key)

    @classmethod
    def load(cls, directory: Path | str) -> CertificateAuthority:
        """The CA that :meth:`create` wrote to ``directory``, to issue more certificates later."""
        directory = Path(directory)
        try:
            certificate = x509.load_pem_x509_certificate((directory / CA_CERTIFICATE).read_bytes())
            key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
        except (OSError, ValueError) as error:
            raise LabError(f"no lab CA in {directory}: {error}") from error
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise LabError(f"{directory / CA_KEY}: not an EC key, so not a lab CA's")
        return cls(directory, certificate, key)

    def issue(
        self,
        names: Sequence[str],
        directory: Path | str,
        valid_for: datetime.timedelta = datetime.timedelta(days=7),
    ) -> tuple[Path, Path]:
        """A server certificate for ``names`` (DNS names; IP addresses become IP subjectAltNames), signed by
        this CA. Writes ``<first name>.pem`` and ``<first name>.key`` in ``directory`` (created if missing)
        and returns their paths ``(certificate, key)``."""
        if not names:
            raise LabError("a certificate needs at least one name")
        directory = Path(directory)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + valid_for, self.certificate.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName([_general_name(name) for name in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(certificate_signing=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        certificate_path = directory / f"{names[0]}.pem"
        key_path = directory / f"{names[0]}.key"
        _write(key_path, _key_pem(key), KEY_MODE)
        _write(certificate_path, certificate.public_bytes(serialization.Encoding.PEM), CERTIFICATE_MODE)
        return certificate_path, key_path


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_usage(certificate_signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not certificate_signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certificate_signing,
        crl_sign=certificate_signing,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole with ``mode`` (whatever the umask): a temporary file beside it, renamed into place,
    so a reader never sees half a file and a key is never readable by others, not even for a moment."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
