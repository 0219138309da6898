"""The fleet's own certificate authority, for the links between its hosts (``D/secrets/tls``).

Made once, like the other secrets, when the fleet file has ``[hosts]``, and kept. Each identity is
one private file holding its key and certificate (so a crash never leaves a key beside another's
certificate):

- ``authority.pem``: the CA that issues, newest first in ``trust.pem``;
- ``trust.pem``: the CA certificates every link trusts (more than one while a CA is replaced);
- ``host-NAME.pem`` per host: its private address (IP subjectAltName) and name (DNS name, which
  nginx checks); server and client. Replication links, PostgreSQL's and Redis's servers, and nginx's
  relays to other hosts present it;
- ``front.pem``: what the front's nginx presents on inbound links, the only certificate they take;
- ``database.pem``: what Synapse's processes present to PostgreSQL, named as Synapse's role.

Replacing the CA takes three steps, each installed on every host (``synfleet apply --host``) before
the next: :func:`new_authority` (trusted beside the old one, issuing nothing yet), :func:`rotate`
(every certificate anew, from it), :func:`retire` (the old CA no longer trusted).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from synfleet.errors import UsageError
from synfleet.layout import SECRETS_DIR
from synfleet.model.schema import FleetSpec
from synfleet.pki.certificates import CLIENT, SERVER, authority, certificate_pem, issue, key_pem, new_key
from synfleet.render.files import create_file, current_file, write_file

#: Under ``D/secrets`` and under every installed secrets directory (the run's, a container's).
TLS_DIR = "tls"
AUTHORITY = "authority"
TRUST = "trust.pem"
CA_VALIDITY = datetime.timedelta(days=3650)
VALIDITY = datetime.timedelta(days=365)
#: ``synfleet check`` and ``certs`` warn when a certificate ends sooner than this.
RENEW_BEFORE = datetime.timedelta(days=30)


class Role(StrEnum):
    """What a certificate stands for (its subject's organizational unit)."""

    AUTHORITY = "authority"
    HOST = "host"
    FRONT = "front"
    DATABASE = "database"


class Installed(StrEnum):
    """The files a host is given, in its ``secrets/tls``: the trust bundle, and the key and
    certificate of each identity it presents."""

    TRUST = "trust.pem"
    HOST = "host"
    FRONT = "front"
    DATABASE = "database"

    @property
    def certificate(self) -> str:
        return f"{TLS_DIR}/{self.value}" if self is Installed.TRUST else f"{TLS_DIR}/{self.value}.pem"

    @property
    def key(self) -> str:
        return f"{TLS_DIR}/{self.value}.key"


@dataclass(frozen=True)
class Identity:
    """A key and the certificate for it."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def key_pem(self) -> str:
        return key_pem(self.key).decode()

    @property
    def certificate_pem(self) -> str:
        return certificate_pem(self.certificate).decode()

    @property
    def expires(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def names(self) -> list[str]:
        extension = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [*extension.get_values_for_type(x509.DNSName), *map(str, extension.get_values_for_type(x509.IPAddress))]


def subject(spec: FleetSpec, role: Role, name: str) -> x509.Name:
    """A certificate's subject: the fleet (organization), its role and its name."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"synfleet {spec.server_name}"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )


def distinguished_name(spec: FleetSpec, role: Role, name: str) -> str:
    """The subject as nginx's ``$ssl_client_s_dn`` gives it (RFC 2253, most specific first)."""
    return subject(spec, role, name).rfc4514_string()


FRONT_NAME = "nginx"


def _authority_subject(spec: FleetSpec) -> x509.Name:
    """A CA's subject: named by when it was made, so that a new CA and the one it replaces differ."""
    return subject(spec, Role.AUTHORITY, f"fleet CA {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S}")


@dataclass(frozen=True)
class Wanted:
    """A certificate the fleet needs: file stem, role, common name, subjectAltNames, usages."""

    stem: str
    role: Role
    name: str
    names: tuple[str, ...]
    usages: tuple[x509.ObjectIdentifier, ...]


def wanted(spec: FleetSpec) -> list[Wanted]:
    """Every certificate of the fleet, from its file: one per host, the front's, the database client's."""
    found = [
        Wanted(f"host-{host.name}", Role.HOST, host.name, (host.name, host.address), (SERVER, CLIENT))
        for host in spec.fleet.hosts
    ]
    found.append(Wanted("front", Role.FRONT, FRONT_NAME, (FRONT_NAME,), (CLIENT,)))
    user = spec.database.user
    found.append(Wanted("database", Role.DATABASE, user, (user,), (CLIENT,)))
    return found


class FleetAuthority:
    """The fleet's CA and certificates in ``directory/secrets/tls``."""

    def __init__(self, directory: Path) -> None:
        self.folder = directory / SECRETS_DIR / TLS_DIR

    def path(self, stem: str) -> Path:
        return self.folder / f"{stem}.pem"

    def exists(self) -> bool:
        return self.path(AUTHORITY).exists()

    def _read(self, stem: str) -> Identity | None:
        found = current_file(self.path(stem))
        if found is None:
            return None
        data = found[0].encode()
        try:
            key = serialization.load_pem_private_key(data, password=None)
            certificate = x509.load_pem_x509_certificate(data)
        except ValueError as exc:
            raise UsageError(f"{self.path(stem)}: not a key and certificate: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != certificate.public_key():
            raise UsageError(f"{self.path(stem)}: the key is not the certificate's")
        return Identity(key, certificate)

    def _write(self, stem: str, identity: Identity) -> None:
        write_file(self.path(stem), identity.key_pem + identity.certificate_pem, mode=0o600)

    def identity(self, stem: str) -> Identity:
        found = self._read(stem)
        if found is None:
            raise UsageError(f"{self.path(stem)} is missing: `synfleet render` or `up` makes the fleet's certificates")
        return found

    @property
    def authority(self) -> Identity:
        return self.identity(AUTHORITY)

    def trusted(self) -> list[x509.Certificate]:
        found = current_file(self.folder / TRUST)
        return x509.load_pem_x509_certificates(found[0].encode()) if found else []

    def _write_trust(self, certificates: list[x509.Certificate]) -> None:
        text = "".join(certificate_pem(c).decode() for c in certificates)
        write_file(self.folder / TRUST, text, mode=0o600)

    def ensure(self, spec: FleetSpec) -> None:
        """Make the CA if there is none, and each certificate the fleet needs that is missing or no
        longer names what the fleet file says (a host's address changed)."""
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._read(AUTHORITY) is None:
                key = new_key()
                made = Identity(key, authority(_authority_subject(spec), key, CA_VALIDITY))
                create_file(self.path(AUTHORITY), made.key_pem + made.certificate_pem)
                self._write_trust([made.certificate])
            if not self.trusted():
                self._write_trust([self.authority.certificate])
            for want in wanted(spec):
                current = self._read(want.stem)
                if current is None or sorted(current.names) != sorted(want.names):
                    self._issue(spec, want)
        except OSError as exc:
            raise UsageError(f"{self.folder}: cannot write the fleet's certificates: {exc.strerror}") from None

    def _issue(self, spec: FleetSpec, want: Wanted) -> None:
        ca = self.authority
        key = new_key()
        made = issue(
            ca.certificate, ca.key, subject(spec, want.role, want.name), key, want.names, want.usages, VALIDITY
        )
        self._write(want.stem, Identity(key, made))

    def identities(self, spec: FleetSpec) -> Iterator[tuple[Wanted, Identity]]:
        for want in wanted(spec):
            yield want, self.identity(want.stem)


def rotate(directory: Path, spec: FleetSpec) -> list[str]:
    """Issue every certificate of the fleet anew, from the newest CA; the names of their files."""
    fleet = FleetAuthority(directory)
    fleet.ensure(spec)
    for want in wanted(spec):
        fleet._issue(spec, want)
    return [fleet.path(want.stem).name for want in wanted(spec)]


def new_authority(directory: Path, spec: FleetSpec) -> x509.Certificate:
    """A new CA, trusted beside the ones trusted now; it issues from the next :func:`rotate` on."""
    fleet = FleetAuthority(directory)
    fleet.ensure(spec)
    key = new_key()
    made = Identity(key, authority(_authority_subject(spec), key, CA_VALIDITY))
    # Trusted first, then issuing: a crash in between leaves the old CA issuing, the new one trusted.
    fleet._write_trust([made.certificate, *fleet.trusted()])
    fleet._write(AUTHORITY, made)
    return made.certificate


def retire(directory: Path, spec: FleetSpec) -> list[x509.Certificate]:
    """Stop trusting every CA but the newest; refused while a certificate of the fleet is still
    one of theirs. Returns the CAs dropped."""
    fleet = FleetAuthority(directory)
    fleet.ensure(spec)
    current = fleet.authority.certificate
    for want, identity in fleet.identities(spec):
        if identity.certificate.issuer != current.subject or not _signed_by(identity.certificate, current):
            raise UsageError(
                f"{fleet.path(want.stem).name} was issued by an older CA: `synfleet certs rotate` first, "
                "and install it on every host (`synfleet apply --host NAME`)"
            )
    dropped = [c for c in fleet.trusted() if c != current]
    fleet._write_trust([current])
    return dropped


def problems(directory: Path, spec: FleetSpec) -> list[str]:
    """What is wrong with the fleet's certificates: missing, naming other than the fleet file says,
    not issued by a trusted CA, or ending within :data:`RENEW_BEFORE`."""
    fleet = FleetAuthority(directory)
    if not fleet.exists():
        return [f"no fleet CA in {fleet.folder}: `synfleet render` makes it"]
    trusted = fleet.trusted()
    soon = datetime.datetime.now(datetime.UTC) + RENEW_BEFORE
    found = []
    for want in wanted(spec):
        name = fleet.path(want.stem).name
        try:
            identity = fleet.identity(want.stem)
        except UsageError as exc:
            found.append(str(exc))
            continue
        if sorted(identity.names) != sorted(want.names):
            found.append(f"{name} names {', '.join(identity.names)}, not {', '.join(want.names)}")
        if not any(_signed_by(identity.certificate, ca) for ca in trusted):
            found.append(f"{name} is not issued by a trusted CA")
        if identity.expires < soon:
            found.append(f"{name} ends {identity.expires:%Y-%m-%d}: synfleet certs rotate")
    return found


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def host_files(directory: Path, spec: FleetSpec, host: str) -> dict[str, str]:
    """What ``host`` is given in its ``secrets/tls``, by path relative to its secrets directory: the
    trust bundle, its own key and certificate, the front's (on the front's host) and the database
    client's (where a Synapse process runs)."""
    fleet = FleetAuthority(directory)
    trust = "".join(certificate_pem(c).decode() for c in fleet.trusted())
    files = {Installed.TRUST.certificate: trust}
    given = [(Installed.HOST, f"host-{host}")]
    if spec.fleet.front == host:
        given.append((Installed.FRONT, "front"))
    if any(w.host == host for w in spec.fleet.workers):
        given.append((Installed.DATABASE, "database"))
    for installed, stem in given:
        identity = fleet.identity(stem)
        files[installed.certificate] = identity.certificate_pem
        files[installed.key] = identity.key_pem
    return files
