"""What every test module may use: the synfleet command, run as a user runs it, and a fleet under test
(a deployment directory whose fleet `synfleet up` started and `synfleet down` stops, whatever happens)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

import helpers
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.system import free_port

#: How long a command that starts, stops or changes a whole fleet may take.
FLEET_TIMEOUT = 600.0

Runner = Callable[..., subprocess.CompletedProcess[Any]]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``prerequisite(missing)`` skips, or with CI=true fails, when ``missing`` is set."""
    for mark in item.iter_markers("prerequisite"):
        helpers.require(mark.args[0])


def synfleet(
    *args: str,
    directory: Path | None = None,
    stdin: str = "",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    check: bool = False,
    runner: Runner = subprocess.run,
) -> subprocess.CompletedProcess[str]:
    """``synfleet *args`` (then ``--dir directory`` when given) with ``stdin`` as its input, its output
    captured as text. ``runner`` is how it starts (:func:`subprocess.run`, or a lab host's ``run`` to run
    it in that host). With ``check``, an exit status other than 0 fails the test, showing the output."""
    command = [sys.executable, "-m", "synfleet", *args]
    if directory is not None:
        command += ["--dir", str(directory)]
    done: subprocess.CompletedProcess[str] = runner(
        command, input=stdin, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )
    if check:
        assert done.returncode == 0, f"{shlex.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


@contextmanager
def fleet_up(
    directory: Path, *, env: Mapping[str, str] | None = None, timeout: float = FLEET_TIMEOUT
) -> Iterator[subprocess.CompletedProcess[str]]:
    """The fleet of ``directory`` started by `synfleet up` (which must succeed; what it printed is the
    ``with`` value) and stopped by `synfleet down` when the block ends, however it ends: a failed or
    interrupted `up` may have started part of the fleet."""
    try:
        yield synfleet("up", directory=directory, env=env, timeout=timeout, check=True)
    finally:
        down = synfleet("down", directory=directory, env=env, timeout=timeout)
        print(down.stdout, down.stderr)


@dataclass
class RunningFleet:
    """A deployment directory whose fleet is running, nginx listening on 127.0.0.1:``port``. Test
    modules subclass it (with defaults for their own fields) to add what their tests need."""

    directory: Path
    port: int
    profile: str
    up_seconds: float = 0.0  # from `synfleet up` to every process healthy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def synfleet(self, *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
        """:func:`synfleet` on this directory, allowed the time a whole fleet takes unless told."""
        options.setdefault("timeout", FLEET_TIMEOUT)
        return synfleet(*args, directory=self.directory, **options)

    def after_up(self) -> None:
        """What the fleet needs before the first test has it (users, rooms); `up` has succeeded."""

    def after_down(self) -> None:
        """What must hold once `synfleet down` has returned (also when the setup failed)."""


F = TypeVar("F", bound=RunningFleet)
#: A section's changed keys, or a function of the profile that gives them when the fleet is made
#: (for ports, which must be free then).
Section = Mapping[str, Any] | Callable[[str], Mapping[str, Any]]


def fleet_under_test(
    kind: type[F],
    profiles: str | Sequence[str] = "small",
    *,
    name: str = "fleet",
    scope: Literal["session", "package", "module", "class", "function"] = "module",
    **sections: Section,
) -> Callable[..., object]:
    """A fixture, ``name`` of ``scope``, whose value is a ``kind`` for a fleet that runs meanwhile: a new
    deployment directory whose fleet.toml is the profile with ``sections`` changed and nginx on a free
    port, started by `synfleet up`, then ``after_up()``; `synfleet down` and ``after_down()`` at the end
    of the scope, even when the setup or a test failed. Given several profiles, the fixture is
    parametrized over them (test ids ``[profile]``)."""
    several = not isinstance(profiles, str)

    @pytest.fixture(scope=scope, name=name, params=list(profiles) if several else None)
    def running_fleet(request: pytest.FixtureRequest) -> Iterator[F]:
        profile = str(request.param) if several else str(profiles)
        with world_readable_tempdir(f"synfleet-{profile}-") as directory:
            port = free_port()
            changed = {section: keys(profile) if callable(keys) else keys for section, keys in sections.items()}
            listen = {"http_port": port, **changed.pop("listen", {})}
            spec = helpers.profile_with(profile, listen=listen, **{s: dict(keys) for s, keys in changed.items()})
            (directory / "fleet.toml").write_text(fleet_toml(spec))
            fleet = kind(directory=directory, port=port, profile=profile)
            try:
                began = time.monotonic()
                with fleet_up(directory):
                    fleet.up_seconds = time.monotonic() - began
                    fleet.after_up()
                    yield fleet
            finally:
                fleet.after_down()

    return running_fleet
