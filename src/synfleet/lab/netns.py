"""Linux network namespaces through iproute2: create and delete them, find the processes inside, the
command prefix that runs a program in one, and the per-namespace ``/etc`` files that ``ip netns exec``
bind-mounts over ``/etc/hosts`` and ``/etc/resolv.conf``."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from synfleet.lab.errors import LabError
from synfleet.system import find_binary, require_binary

#: Where ``ip netns exec NS`` looks for files to bind-mount over ``/etc/<file>`` in the program it starts.
NETNS_ETC = Path("/etc/netns")


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its stdout, or an error that shows the command and what ip said."""
    command = [require_binary("ip"), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"`{' '.join(command)}` failed: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


def exec_prefix(namespace: str) -> list[str]:
    """The command prefix that runs a program inside ``namespace`` with its ``/etc`` files in place."""
    return [require_binary("ip"), "netns", "exec", namespace]


def exists(namespace: str) -> bool:
    """Whether ``namespace`` is a named network namespace (as ``ip netns list`` shows it)."""
    names = (line.split()[0] for line in ip("netns", "list").splitlines() if line.strip())
    return namespace in names


def add(namespace: str) -> None:
    """Create ``namespace`` with its loopback interface up; an existing one of that name is an error."""
    ip("netns", "add", namespace)
    try:
        ip("-n", namespace, "link", "set", "lo", "up")
    except BaseException:
        delete(namespace)
        raise


def delete(namespace: str) -> None:
    """Delete ``namespace`` if it exists. Its interfaces go with it; processes inside must be stopped first,
    or they keep the namespace alive, unnamed."""
    if exists(namespace):
        ip("netns", "delete", namespace)


def pids(namespace: str) -> list[int]:
    """The processes whose network namespace is ``namespace`` (none if it does not exist)."""
    if not exists(namespace):
        return []
    return [int(word) for word in ip("netns", "pids", namespace).split()]


def write_etc(namespace: str, files: Mapping[str, str]) -> Path:
    """Write ``/etc/netns/<namespace>/<name>`` for each file (e.g. ``hosts``, ``resolv.conf``), world-readable
    as their ``/etc`` originals are, and return the directory. Each name must exist in ``/etc``, or ``ip netns
    exec`` has nothing to mount it over."""
    directory = NETNS_ETC / namespace
    NETNS_ETC.mkdir(mode=0o755, exist_ok=True)
    directory.mkdir(mode=0o755)
    for name, text in files.items():
        target = directory / name
        target.write_text(text)
        target.chmod(0o644)
    return directory


def remove_etc(namespace: str) -> None:
    """Remove ``/etc/netns/<namespace>`` if it is there. ``/etc/netns`` itself stays: other labs may use it."""
    shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)


def unavailable_reason() -> str | None:
    """Why this process cannot create network namespaces (not root, no iproute2, not permitted here), or
    None if it can: tries to create and delete a namespace of its own."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if find_binary("ip") is None:
        return "`ip` is not installed (apt-get install iproute2)"
    probe = f"sf-probe-{secrets.token_hex(3)}"
    try:
        add(probe)
    except LabError as error:
        return f"cannot create a network namespace here: {error}"
    delete(probe)
    return None


_CLONE_NEWNET = 0x40000000
NETNS_RUN = Path("/var/run/netns")


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Move the calling thread (only it: network namespaces are per thread) into namespace ``name``
    for the ``with`` block, so that sockets it opens there reach the lab's addresses; then back."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(NETNS_RUN / name, os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise LabError(f"cannot enter network namespace {name}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            libc.setns(home, _CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)
