"""The multi-host lab: hosts in network namespaces that resolve each other's names through the lab's dnsmasq,
answer SRV lookups with NXDOMAIN at once (what Synapse's federation client needs), talk TLS with certificates
from the lab CA, and leave nothing behind, not even when the test body fails."""

from __future__ import annotations

import json
import os
import select
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

import helpers
from synfleet.lab import CertificateAuthority, Lab, LabError, unavailable_reason
from synfleet.lab import hosts as lab_hosts
from synfleet.lab import netns as lab_netns
from synfleet.lab import stopping as lab_stopping

PYTHON = sys.executable
PORT = 8448

HTTPS_SERVER = """
import http.server, ssl, sys
certificate, key, address, port = sys.argv[1:5]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((address, int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(certificate, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""

HTTPS_CLIENT = """
import http.client, ssl, sys
host, port, cafile = sys.argv[1:4]
context = ssl.create_default_context(cafile=cafile or None)
connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
connection.request("GET", "/")
response = connection.getresponse()
print(response.status, response.read().decode())
"""

# What Synapse's federation client does first: SRV lookups through twisted.names' client resolver, which
# reads /etc/resolv.conf and /etc/hosts. Prints one JSON line per lookup: answer or error, and seconds taken.
TWISTED_LOOKUPS = """
import json, sys, time
from twisted.internet import defer, task
from twisted.names import client
async def main(reactor):
    for kind, name in (arg.split(":", 1) for arg in sys.argv[1:]):
        lookup = {"SRV": client.lookupService, "A": client.lookupAddress}[kind]
        started = time.monotonic()
        try:
            answers, _, _ = await lookup(name)
            result = [str(answer.payload.dottedQuad()) for answer in answers if kind == "A"]
        except Exception as error:
            result = type(error).__name__
        print(json.dumps({"name": name, "result": result, "seconds": time.monotonic() - started}))
task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""

SYNAPSE_SRV = """
import sys
from twisted.internet import defer, task
from synapse.http.federation.srv_resolver import SrvResolver
async def main(reactor):
    print(await SrvResolver().resolve_service(sys.argv[1].encode()))
task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""


@pytest.fixture
def netns_available() -> None:
    helpers.require(unavailable_reason())


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie waiting for a parent that is not ours counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def assert_nothing_left(lab: Lab, pids: list[int]) -> None:
    assert lab.namespaces
    namespaces = lab_netns.ip("netns", "list")
    for name in lab.namespaces:
        assert name not in namespaces.split(), f"namespace {name} left behind"
        assert not (lab_netns.NETNS_ETC / name).exists(), f"/etc/netns/{name} left behind"
    assert pids
    assert [pid for pid in pids if not gone(pid)] == []


def root_network() -> list[str]:
    """The machine's own interfaces, addresses and routes, as text to compare."""
    return [lab_netns.ip("-o", *what) for what in (["link"], ["addr"], ["route"], ["-6", "route"])]


def read_line(process: subprocess.Popen[str], seconds: float = 15) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], seconds)
    assert ready, f"no output in {seconds}s (exit status {process.poll()})"
    return process.stdout.readline().strip()


# The CA: no namespaces needed.


def test_issued_certificate_is_a_server_certificate_for_its_names(ca: CertificateAuthority, tmp_path: Path) -> None:
    certificate_path, key_path = ca.issue(["b.lab.test", "10.1.2.3"], tmp_path / "b")

    assert (certificate_path.name, key_path.name) == ("b.lab.test.pem", "b.lab.test.key")
    assert (certificate_path.stat().st_mode & 0o777, key_path.stat().st_mode & 0o777) == (0o644, 0o600)
    assert (ca.certificate_path.stat().st_mode & 0o777, (ca.directory / "ca.key").stat().st_mode & 0o777) == (
        0o644,
        0o600,
    )
    certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["b.lab.test"]
    assert [str(address) for address in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert certificate.issuer == ca.certificate.subject
    assert certificate.not_valid_before_utc < certificate.not_valid_after_utc
    assert (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days >= 1


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str) -> None:
    """A TLS handshake in memory, no sockets: raises what the client's verification raises."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname=server_hostname)
    server = server_context.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(10):
        done = 0
        for end in (client, server):
            try:
                end.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


def test_certificate_verifies_against_the_lab_ca_only(ca: CertificateAuthority, tmp_path: Path) -> None:
    certificate_path, key_path = ca.issue(["b.lab.test"], tmp_path / "b")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificate_path, key_path)
    lab_trust = ssl.create_default_context(cafile=ca.certificate_path)
    if hasattr(ssl, "VERIFY_X509_STRICT"):
        lab_trust.verify_flags |= ssl.VERIFY_X509_STRICT

    handshake(server_context, lab_trust, "b.lab.test")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(server_context, ssl.create_default_context(cafile=ca.certificate_path), "a.lab.test")
    other_ca = CertificateAuthority.create(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(server_context, ssl.create_default_context(cafile=other_ca.certificate_path), "b.lab.test")


def test_a_loaded_ca_issues_certificates_the_first_one_trusts(ca: CertificateAuthority, tmp_path: Path) -> None:
    certificate_path, key_path = CertificateAuthority.load(ca.directory).issue(["c.lab.test"], tmp_path / "c")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificate_path, key_path)
    handshake(server_context, ssl.create_default_context(cafile=ca.certificate_path), "c.lab.test")
    with pytest.raises(LabError, match="no lab CA in"):
        CertificateAuthority.load(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("names", "domain", "subnet", "message"),
    [
        (["A"], "lab.test", None, "lab host name 'A': use lowercase"),
        (["a", "b", "a"], "lab.test", None, "a given more than once"),
        ("ab", "lab.test", None, "expected a list of names"),
        ([], "lab.test", None, "at least one name"),
        (["a"], "lab..test", None, "lab domain 'lab..test'"),
        (["a"], "lab.test", "192.168.1.0/24", "use a /24 inside 10.0.0.0/8"),
        (["a"], "lab.test", "10.1.0.0/16", "use a /24 inside 10.0.0.0/8"),
    ],
)
def test_bad_lab_descriptions_are_refused_before_anything_is_made(
    names: list[str], domain: str, subnet: str | None, message: str
) -> None:
    with pytest.raises(LabError, match=message):
        Lab(names, domain=domain, subnet=subnet)


# The lab itself: real namespaces, dnsmasq, processes.

integration = pytest.mark.integration


@pytest.fixture
def lab(netns_available: None) -> Iterator[Lab]:
    with Lab(["a", "b"], domain="fed.test") as lab:
        yield lab
    assert_nothing_left(lab, [lab.resolver.pid] if lab.resolver else [])


@integration
def test_hosts_resolve_each_other_and_nothing_else(lab: Lab) -> None:
    for host in lab:
        for other in lab:
            found = host.run(["getent", "hosts", other.fqdn], capture_output=True, text=True, check=True)
            assert found.stdout.split() == [other.address, other.fqdn]
        started = time.monotonic()
        assert host.run(["getent", "hosts", "matrix.org"], capture_output=True).returncode == 2
        assert time.monotonic() - started < 1
    resolved = lab["a"].run(
        [PYTHON, "-c", "import socket, sys; print(socket.getaddrinfo(sys.argv[1], 8448)[0][4][0])", "b.fed.test"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert resolved.stdout.strip() == lab["b"].address


@integration
def test_twisted_srv_lookups_get_nxdomain_at_once(lab: Lab) -> None:
    lookups = [
        "SRV:_matrix-fed._tcp.b.fed.test",
        "SRV:_matrix._tcp.b.fed.test",
        "A:b.fed.test",
        "A:matrix.org",
        "A:sub.b.fed.test",
    ]
    started = time.monotonic()
    done = lab["a"].run([PYTHON, "-c", TWISTED_LOOKUPS, *lookups], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    results = {line["name"]: line for line in map(json.loads, done.stdout.splitlines())}
    assert {name: line["result"] for name, line in results.items()} == {
        "_matrix-fed._tcp.b.fed.test": "DNSNameError",
        "_matrix._tcp.b.fed.test": "DNSNameError",
        "b.fed.test": [lab["b"].address],
        "matrix.org": "DNSNameError",
        "sub.b.fed.test": "DNSNameError",
    }
    assert max(line["seconds"] for line in results.values()) < 1, results
    assert time.monotonic() - started < 20
    assert lab.resolver is not None
    assert "query[SRV] _matrix-fed._tcp.b.fed.test from " + lab["a"].address in lab.resolver.log()


@integration
def test_synapse_srv_resolver_falls_back_to_the_host_name(lab: Lab) -> None:
    helpers.require(helpers.synapse_reason())
    done = lab["a"].run(
        [PYTHON, "-c", SYNAPSE_SRV, "_matrix-fed._tcp.b.fed.test"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


@integration
def test_run_passes_environment_and_working_directory_through(lab: Lab, tmp_path: Path) -> None:
    done = lab["b"].run(
        ["sh", "-c", 'echo "$LAB_PROBE"; pwd'],
        env={"PATH": os.environ["PATH"], "LAB_PROBE": "through"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["through", str(tmp_path)]


@integration
def test_https_from_one_host_to_another_with_the_lab_ca(
    netns_available: None, ca: CertificateAuthority, tmp_path: Path
) -> None:
    before = root_network()
    with Lab(["a", "b"], domain="fed.test") as lab:
        a, b = lab["a"], lab["b"]
        assert root_network() == before, "the lab changed the machine's own network"
        certificate, key = ca.issue([b.fqdn], tmp_path / "b")
        server = b.popen(
            [PYTHON, "-c", HTTPS_SERVER, certificate, key, b.address, str(PORT)], stdout=subprocess.PIPE, text=True
        )
        assert read_line(server) == "ready"
        # `ip netns exec` execs the program, so the PID popen returns is the server's own.
        assert Path(f"/proc/{server.pid}/exe").resolve() == Path(PYTHON).resolve()

        fetched = a.run(
            [PYTHON, "-c", HTTPS_CLIENT, b.fqdn, str(PORT), ca.certificate_path],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (fetched.returncode, fetched.stdout.strip()) == (0, f"200 hello {a.address}"), fetched.stderr
        untrusted = a.run([PYTHON, "-c", HTTPS_CLIENT, b.fqdn, str(PORT), ""], capture_output=True, text=True)
        assert untrusted.returncode != 0
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        assert lab.resolver is not None
        started = [server.pid, lab.resolver.pid]
    assert_nothing_left(lab, started)
    assert server.returncode is not None
    assert root_network() == before


@integration
@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failure_in_the_block_still_removes_everything(netns_available: None, failure: type[BaseException]) -> None:
    with pytest.raises(failure), Lab(["a", "b"]) as lab:
        tracked = lab["a"].popen(["sleep", "300"])
        # A daemon: its shell exits at once, leaving a process the lab holds no handle to.
        daemon = lab["b"].popen(["sh", "-c", "sleep 300 & echo $!"], stdout=subprocess.PIPE, text=True)
        untracked = int(read_line(daemon))
        assert daemon.wait(10) == 0
        assert lab.resolver is not None
        started = [tracked.pid, untracked, lab.resolver.pid]
        assert not any(gone(pid) for pid in started)
        raise failure("the test body failed")
    assert_nothing_left(lab, started)


@integration
def test_a_lab_that_fails_to_start_removes_what_it_made(netns_available: None, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = Lab(["a", "b"])

    def fail(*args: object) -> None:
        assert all(lab_netns.exists(name) for name in lab.namespaces)
        raise LabError("dnsmasq would not start")

    monkeypatch.setattr(lab_hosts.Resolver, "start", fail)
    with pytest.raises(LabError, match="dnsmasq would not start"):
        lab.start()
    for name in lab.namespaces:
        assert not lab_netns.exists(name)
        assert not (lab_netns.NETNS_ETC / name).exists()


@integration
def test_ctrl_c_during_cleanup_is_held_back_until_the_lab_is_gone(
    netns_available: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_stopping, "GRACE_SECONDS", 1.0)
    with pytest.raises(KeyboardInterrupt), Lab(["a"]) as lab:
        # Ignores SIGTERM, so the sweep of its namespace waits out the grace period; the Ctrl-C lands then.
        stubborn = lab["a"].popen(
            ["sh", "-c", "trap '' TERM; (while :; do sleep 0.1; done) & echo $!"], stdout=subprocess.PIPE, text=True
        )
        started = [int(read_line(stubborn))]
        assert stubborn.wait(10) == 0
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    assert_nothing_left(lab, started)
