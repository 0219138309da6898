"""Name resolution inside a lab: one dnsmasq per lab, and the ``hosts`` and ``resolv.conf`` every host sees.

dnsmasq answers A (and PTR) records for exactly the lab's host names and NXDOMAIN, at once, for every other
name: the SRV names Synapse's federation client asks first (``_matrix-fed._tcp.<name>``,
``_matrix._tcp.<name>``), names under a host's name, and the whole internet, which a lab does not have.
AAAA queries for a host get an empty (NODATA) answer: hosts have IPv4 addresses only.
NXDOMAIN matters: with no upstream servers dnsmasq would otherwise answer REFUSED, which Synapse's
``SrvResolver`` does not treat as "no SRV record" (it only swallows ``DNSNameError``), so federation fails.
"""

from __future__ import annotations

import grp
import pwd
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from synfleet.lab import netns, stopping
from synfleet.lab.errors import LabError
from synfleet.system import require_binary

#: The unprivileged account dnsmasq runs as once its port-53 socket is bound.
RESOLVER_USER = "nobody"
#: How long dnsmasq gets to bind its socket and write its PID file.
START_SECONDS = 10.0


def resolv_conf(nameserver: str) -> str:
    """``/etc/resolv.conf`` for a host: only the lab's resolver; no search list, so names are used as given."""
    return f"# synfleet lab: the lab's dnsmasq\nnameserver {nameserver}\noptions timeout:1 attempts:2\n"


def hosts_file(name: str, address: str) -> str:
    """``/etc/hosts`` for a host: localhost, and the host's own name, as a real machine has; other hosts'
    names come from the lab's DNS, so that path is the one Synapse and its tests exercise."""
    return f"# synfleet lab\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{name}\n"


def dnsmasq_command(dnsmasq: str, listen: str, records: Mapping[str, str], pid_file: Path) -> list[str]:
    """The dnsmasq command line: in the foreground (so the PID we start is the PID that runs), no
    configuration file, no upstream servers, no ``/etc/hosts``; an A and PTR record per name in ``records``
    (name -> address) and NXDOMAIN for every other name (``--address=/#/``)."""
    account = pwd.getpwnam(RESOLVER_USER)
    return [
        dnsmasq,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        f"--listen-address={listen}",
        "--bind-interfaces",
        "--port=53",
        f"--user={account.pw_name}",
        f"--group={grp.getgrgid(account.pw_gid).gr_name}",
        f"--pid-file={pid_file}",
        "--log-facility=-",
        "--log-queries",
        *(f"--host-record={name},{address}" for name, address in records.items()),
        "--address=/#/",
    ]


@dataclass
class Resolver:
    """The lab's DNS server: dnsmasq running in ``namespace`` on ``address``, stopped by its PID."""

    namespace: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, namespace: str, address: str, records: Mapping[str, str], state_dir: Path) -> Resolver:
        """Start dnsmasq in ``namespace`` listening on ``address`` (which must already be up there), and
        return once it has bound its socket (it writes its PID file after that)."""
        pid_file = state_dir / "dnsmasq.pid"
        log_path = state_dir / "dnsmasq.log"
        command = dnsmasq_command(require_binary("dnsmasq"), address, records, pid_file)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*netns.exec_prefix(namespace), *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        resolver = cls(namespace, address, process, log_path)
        try:
            resolver._wait_ready(pid_file)
        except BaseException:
            resolver.stop()
            raise
        return resolver

    def _wait_ready(self, pid_file: Path) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabError(f"dnsmasq in namespace {self.namespace} exited at once: {self.log_tail()}")
            if pid_file.exists() and pid_file.read_text().strip() == str(self.pid):
                return
            time.sleep(0.01)
        raise LabError(
            f"dnsmasq in namespace {self.namespace} did not start in {START_SECONDS:.0f}s: {self.log_tail()}"
        )

    def log(self) -> str:
        """What dnsmasq has logged so far, including every query (``--log-queries``)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 5) -> str:
        return " / ".join(self.log().strip().splitlines()[-lines:]) or "(no output)"

    def stop(self) -> None:
        """Stop dnsmasq by its PID and reap it."""
        stopping.stop(self.process)
