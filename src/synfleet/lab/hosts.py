"""Several hosts on one machine: a :class:`Lab` of named hosts, each a network namespace with one address on a
shared private network, and DNS names that every host resolves.

Layout (nothing is added to the machine's own network namespace)::

    namespace sf-<id>          the "switch": bridge br0 with <subnet>.1, dnsmasq on <subnet>.1:53
      p0 ---veth--- eth0        namespace sf-<id>-<name0>: lo, eth0 <subnet>.2, /etc/netns/sf-<id>-<name0>/
      p1 ---veth--- eth0        namespace sf-<id>-<name1>: lo, eth0 <subnet>.3, ...

Each lab takes a random /24 in 10.0.0.0/8 and a random ``<id>``, so labs running side by side (or left over
from a killed run) never share a name. The hosts have no default route: anything outside the lab fails at
once rather than timing out. Leaving the ``with`` block, by return, exception or Ctrl-C, stops every process
in the lab's namespaces (by PID), deletes the namespaces and removes their ``/etc/netns`` directories.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from synfleet.lab import netns, stopping
from synfleet.lab.dns import Resolver, hosts_file, resolv_conf
from synfleet.lab.errors import LabError
from synfleet.system import require_binary

#: What every lab's namespaces are called: ``<prefix>-<id>`` (the switch) and ``<prefix>-<id>-<host>``.
PREFIX = "sf"
LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
BRIDGE = "br0"
HOST_INTERFACE = "eth0"

StrPath = str | os.PathLike[str]


class Host:
    """One host of a lab: a network namespace with the address ``address`` and the DNS name ``fqdn``.

    :meth:`run` and :meth:`popen` start programs inside it through ``ip netns exec``, with the lab's
    ``/etc/hosts`` and ``/etc/resolv.conf`` in place. Everything else about the program (environment,
    working directory, user, files) is the caller's, exactly as with :mod:`subprocess`.
    """

    def __init__(self, lab: Lab, name: str, fqdn: str, netns_name: str, address: str) -> None:
        self._lab = lab
        self.name = name
        self.fqdn = fqdn
        self.netns = netns_name
        self.address = address

    def __repr__(self) -> str:
        return f"Host({self.name!r}, fqdn={self.fqdn!r}, address={self.address!r}, netns={self.netns!r})"

    def command(self, command: Sequence[StrPath]) -> list[str]:
        """``command`` as a command line that runs it in this host (``ip netns exec <netns> ...``)."""
        return [*netns.exec_prefix(self.netns), *(os.fspath(part) for part in command)]

    def run(self, command: Sequence[StrPath], **options: Any) -> subprocess.CompletedProcess[Any]:
        """:func:`subprocess.run` of ``command`` in this host; ``options`` (env, cwd, check, timeout,
        capture_output, text, ...) are passed through unchanged."""
        return subprocess.run(self.command(command), **options)

    def entered(self) -> AbstractContextManager[None]:
        """The calling thread inside this host's network for a ``with`` block (in-process clients)."""
        return netns.entered(self.netns)

    def popen(self, command: Sequence[StrPath], **options: Any) -> subprocess.Popen[Any]:
        """:class:`subprocess.Popen` of ``command`` in this host, ``options`` passed through unchanged. The lab
        stops it (and anything it left running in the lab) when it closes, if the caller has not."""
        process: subprocess.Popen[Any] = subprocess.Popen(self.command(command), **options)
        self._lab._started.append(process)
        return process


class Lab:
    """A set of hosts on one private network with DNS, made on entering the ``with`` block and removed on
    leaving it::

        with Lab(["a", "b"], domain="lab.test") as lab:
            lab["a"].run(["getent", "hosts", "b.lab.test"], check=True)

    ``names`` are DNS labels (lowercase letters, digits, inner hyphens); host ``n`` is ``n.<domain>``.
    ``subnet`` (a /24 inside 10.0.0.0/8) is random unless given.
    """

    def __init__(self, names: Sequence[str], domain: str = "lab.test", subnet: str | None = None) -> None:
        self.domain = _check_domain(domain)
        self.names = _check_names(names)
        self.subnet = _check_subnet(subnet) if subnet else _random_subnet()
        self.id = f"{PREFIX}-{secrets.token_hex(3)}"
        addresses = list(self.subnet.hosts())
        self.resolver_address = str(addresses[0])
        self.hosts: dict[str, Host] = {
            name: Host(self, name, f"{name}.{self.domain}", f"{self.id}-{name}", str(addresses[index + 1]))
            for index, name in enumerate(self.names)
        }
        self.resolver: Resolver | None = None
        self._started: list[subprocess.Popen[Any]] = []
        self._cleanup: ExitStack | None = None

    @property
    def switch_netns(self) -> str:
        """The namespace holding the bridge and the lab's dnsmasq."""
        return self.id

    @property
    def namespaces(self) -> list[str]:
        """All of the lab's namespaces: the switch first, then one per host."""
        return [self.switch_netns, *(host.netns for host in self.hosts.values())]

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Build the lab; if any step fails (or is interrupted), undo the steps done and raise."""
        if self._cleanup is not None:
            raise LabError(f"lab {self.id} is already started")
        require_binary("dnsmasq")  # fail before creating anything if the resolver cannot run
        self._cleanup = ExitStack()
        try:
            self._build(self._cleanup)
        except BaseException:
            self.close()
            raise

    def _build(self, cleanup: ExitStack) -> None:
        state_dir = Path(tempfile.mkdtemp(prefix=f"{self.id}-"))
        cleanup.callback(shutil.rmtree, state_dir, ignore_errors=True)
        prefix_length = self.subnet.prefixlen

        switch = self.switch_netns
        self._add_namespace(cleanup, switch)
        netns.ip("-n", switch, "link", "add", BRIDGE, "type", "bridge")
        netns.ip("-n", switch, "addr", "add", f"{self.resolver_address}/{prefix_length}", "dev", BRIDGE)
        netns.ip("-n", switch, "link", "set", BRIDGE, "up")

        for index, host in enumerate(self.hosts.values()):
            self._add_namespace(cleanup, host.netns)
            cleanup.callback(netns.remove_etc, host.netns)
            netns.write_etc(
                host.netns,
                {"hosts": hosts_file(host.fqdn, host.address), "resolv.conf": resolv_conf(self.resolver_address)},
            )
            # Made inside the switch with its peer moved straight into the host: never in the root namespace.
            port = f"p{index}"
            netns.ip(
                "-n", switch, "link", "add", port, "type", "veth", "peer", "name", HOST_INTERFACE, "netns", host.netns
            )
            netns.ip("-n", switch, "link", "set", port, "master", BRIDGE, "up")
            netns.ip("-n", host.netns, "addr", "add", f"{host.address}/{prefix_length}", "dev", HOST_INTERFACE)
            netns.ip("-n", host.netns, "link", "set", HOST_INTERFACE, "up")

        # Runs before the namespaces are deleted (an ExitStack unwinds last in, first out).
        cleanup.callback(self._stop_started)
        records = {host.fqdn: host.address for host in self.hosts.values()}
        self.resolver = Resolver.start(switch, self.resolver_address, records, state_dir)
        cleanup.callback(self.resolver.stop)

    def _add_namespace(self, cleanup: ExitStack, name: str) -> None:
        netns.add(name)
        cleanup.callback(self._remove_namespace, name)

    @staticmethod
    def _remove_namespace(name: str) -> None:
        left = stopping.stop_all(lambda: netns.pids(name))
        netns.delete(name)
        if left:
            raise LabError(f"processes {left} in namespace {name} survived SIGKILL; the namespace lives on unnamed")

    def _stop_started(self) -> None:
        for process in reversed(self._started):
            stopping.stop(process)

    def close(self) -> None:
        """Stop everything the lab started and remove everything it made. Safe to call more than once. A
        Ctrl-C meanwhile is held back until the lab is gone, then raised."""
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            with _interrupts_deferred():
                cleanup.close()


def _check_names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise LabError(f"lab hosts: expected a list of names, got the string {names!r}")
    if not names:
        raise LabError("lab hosts: at least one name is needed")
    for name in names:
        if not LABEL.fullmatch(name):
            raise LabError(f"lab host name {name!r}: use lowercase letters, digits and inner hyphens (a DNS label)")
    duplicates = sorted({name for name in names if list(names).count(name) > 1})
    if duplicates:
        raise LabError(f"lab host names: {', '.join(duplicates)} given more than once")
    if len(names) > 253:
        raise LabError(f"lab hosts: {len(names)} names, but a lab's /24 holds at most 253 hosts")
    return list(names)


def _check_domain(domain: str) -> str:
    labels = domain.split(".")
    if not all(LABEL.fullmatch(label) for label in labels):
        raise LabError(f"lab domain {domain!r}: use dot-separated DNS labels, e.g. 'lab.test'")
    return domain


def _check_subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(subnet)
    except ValueError as error:
        raise LabError(f"lab subnet {subnet!r}: {error}") from error
    if network.prefixlen != 24 or not network.subnet_of(ipaddress.IPv4Network("10.0.0.0/8")):
        raise LabError(f"lab subnet {subnet!r}: use a /24 inside 10.0.0.0/8, e.g. 10.77.5.0/24")
    return network


def _random_subnet() -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.{random.randrange(1, 255)}.{random.randrange(256)}.0/24")


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold back SIGINT while the body runs (cleanup must not stop half-way), then raise it, if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
