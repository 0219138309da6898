"""podman, run as this machine allows: runc with cgroupfs, and ulimits within the machine's hard
limits (podman's defaults exceed them on some machines, and crun fails on hybrid cgroups). The
settings go to podman and to podman-compose through one containers.conf (``CONTAINERS_CONF``)."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from synfleet.lab.errors import LabError
from synfleet.render.files import write_file

#: The most open files and processes (per account) a container gets, within the machine's hard
#: limits. runc refuses some process limits below the hard one (seen: 30000 of 96365), so that one
#: stays small: Synapse's containers run a few dozen threads each.
ULIMIT_CEILINGS = {"nofile": (resource.RLIMIT_NOFILE, 65536), "nproc": (resource.RLIMIT_NPROC, 4096)}


def ulimits() -> list[str]:
    result = []
    for name, (limit, ceiling) in ULIMIT_CEILINGS.items():
        hard = resource.getrlimit(limit)[1]
        value = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
        result.append(f"{name}={value}:{value}")
    return result


def containers_conf() -> str:
    """podman's settings; ``podman build`` does not apply the default ulimits, see :meth:`Podman.build`."""
    listed = ", ".join(f'"{ulimit}"' for ulimit in ulimits())
    return (
        "# podman settings for this machine, written by synfleet.lab.podman\n"
        "[containers]\n"
        f"default_ulimits = [{listed}]\n"
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
    )


@dataclass(frozen=True)
class Podman:
    """The podman command with this machine's settings in its environment; with ``netns``, run in
    that network namespace (where containers on the host's network live, and where their
    healthchecks and ``exec`` must run too)."""

    env: dict[str, str]
    netns: str = ""

    def inside(self, netns: str) -> Podman:
        return replace(self, netns=netns)

    @property
    def prefix(self) -> list[str]:
        """``nsenter`` into the network namespace alone: `ip netns exec` would also mount a new
        /sys, without the cgroup mounts runc needs."""
        return ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []

    @classmethod
    def for_this_machine(cls) -> Podman:
        if shutil.which("podman") is None:
            raise LabError("podman is not installed (apt-get install podman runc)")
        return cls({**os.environ, "CONTAINERS_CONF": str(_containers_conf_file(containers_conf()))})

    def run(
        self, *args: str, stdin: IO[Any] | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, "podman", *args], env=self.env, stdin=stdin, capture_output=True, text=True, timeout=timeout
        )

    def build(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("build", *(f"--ulimit={ulimit}" for ulimit in ulimits()), *args)

    def check(self, *args: str, timeout: float | None = None) -> str:
        """podman's output; a LabError with its message when it fails."""
        done = self.run(*args, timeout=timeout)
        if done.returncode != 0:
            raise LabError(f"podman {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")
        return done.stdout

    def can_start_containers(self, image: str) -> str | None:
        """None when a container starts here; else why not, in one line."""
        done = self.run("run", "--rm", "--network", "none", image, "true", timeout=120)
        if done.returncode == 0:
            return None
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"podman run exited with {done.returncode}"


def _containers_conf_file(text: str) -> Path:
    """A file holding ``text`` that podman reads: one per content in the temporary directory, used
    only when this account owns it, no other can write it, and it holds ``text``. Another account
    may have made that name first (it is predictable): then a file in a directory of this process's own."""
    path = Path(tempfile.gettempdir()) / f"synfleet-containers-{hashlib.sha256(text.encode()).hexdigest()[:12]}.conf"
    try:
        found = path.lstat()
        if (
            stat.S_ISREG(found.st_mode)
            and found.st_uid == os.geteuid()
            and not found.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            and path.read_text() == text
        ):
            return path
    except FileNotFoundError:
        pass
    try:
        write_file(path, text)
    except OSError:  # another account's file in a sticky directory (renaming over it is refused), a directory
        path = Path(tempfile.mkdtemp(prefix="synfleet-containers-")) / path.name
        write_file(path, text)
    return path
