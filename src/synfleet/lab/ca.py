"""A private certificate authority for a lab: one CA certificate that every host trusts, and server
certificates it issues for host names (e.g. a Synapse federation listener's ``tls_certificate_path``).

Keys and certificates are made as :mod:`synfleet.pki.certificates` makes them. Files are written whole (a
temporary file renamed into place): certificates mode 0644, so an unprivileged account that runs a server
can read them, keys mode 0600. Whoever else must read them also needs to be able to enter the directory.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from synfleet.lab.errors import LabError
from synfleet.pki.certificates import SERVER, authority, certificate_pem, issue, key_pem, new_key

CA_CERTIFICATE = "ca.pem"
CA_KEY = "ca.key"
CERTIFICATE_MODE = 0o644
KEY_MODE = 0o600


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
        key = new_key()
        certificate = authority(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), key, valid_for)
        directory.mkdir(parents=True, exist_ok=True)
        _write(directory / CA_KEY, key_pem(key), KEY_MODE)
        _write(directory / CA_CERTIFICATE, certificate_pem(certificate), CERTIFICATE_MODE)
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
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        certificate = issue(self.certificate, self.key, subject, key, names, (SERVER,), valid_for)
        directory.mkdir(parents=True, exist_ok=True)
        certificate_path = directory / f"{names[0]}.pem"
        key_path = directory / f"{names[0]}.key"
        _write(key_path, key_pem(key), KEY_MODE)
        _write(certificate_path, certificate_pem(certificate), CERTIFICATE_MODE)
        return certificate_path, key_path


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
