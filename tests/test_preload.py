"""The fork start (synapse.start = "fork"): what a forked Synapse process must not share with its
parent or its siblings, checked in real forks of a Python that imported Synapse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import helpers
from conftest import fleet_up, synfleet
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.render.fleet_file import fleet_toml
from synfleet.run.preload import UNSAFE_EXIT, Preloaded, installed_version
from synfleet.system import free_port

pytestmark = pytest.mark.prerequisite(helpers.synapse_reason())

#: Runs in its own Python: preloads, forks three children that each become "a process", and
#: has each report what it holds; they stay until a line arrives on stdin.
FORKS = textwrap.dedent(
    """
    import gc, json, os, random, sys, threading
    from synfleet.run import preload

    preload.preload()
    shared_read, shared_write = os.pipe()  # inherited by every child: kcmp must call it shared
    print(json.dumps({"shared": shared_read}), flush=True)
    children = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:
            argv = [sys.executable, "-m", "synapse.app.generic_worker", f"--child={n}"]
            preload.prepare_child(argv, {"PYTHONUNBUFFERED": "1", "CHILD": str(n)})
            from twisted.internet import reactor
            from synapse.util.stringutils import random_string
            threads_before = threading.active_count()
            # the reactor runs on the new poller; a pool thread wakes it through the new waker
            reactor.callWhenRunning(reactor.callInThread, reactor.callFromThread, reactor.stop)
            reactor.run(installSignalHandlers=False)
            answer = {
                "pid": os.getpid(),
                "epoll": preload._epoll(reactor).fileno(),
                "waker": [reactor.waker.i, reactor.waker.o],
                "random": random.random(),
                "random_string": random_string(24),
                "threads_before_run": threads_before,
                "frozen": gc.get_freeze_count(),
                "environ": os.environ.get("CHILD"),
                "cmdline": open("/proc/self/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip(),
            }
            os.write(1, (json.dumps(answer) + "\\n").encode())  # one write: the children share the pipe
            sys.stdin.readline()
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    """
)


def _python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)


def test_forked_children_have_their_own_reactor_waker_random_state_and_threads() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", FORKS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert parent.stdin is not None and parent.stdout is not None
    try:
        shared = json.loads(parent.stdout.readline() or "{}").get("shared")
        children = [json.loads(parent.stdout.readline() or "{}") for _ in range(3)]
        assert shared is not None and all(children), parent.stderr.read() if parent.stderr else ""
        first, second = children[0]["pid"], children[1]["pid"]
        assert helpers.same_open_file(first, shared, second, shared), "kcmp does not see an inherited pipe"
        for i, a in enumerate(children):
            for b in children[i + 1 :]:
                assert not helpers.same_open_file(a["pid"], a["epoll"], b["pid"], b["epoll"]), "a shared epoll"
                for fa in a["waker"]:
                    assert not any(helpers.same_open_file(a["pid"], fa, b["pid"], fb) for fb in b["waker"])
            for fd in [a["epoll"], *a["waker"]]:
                for own in helpers.descriptors(parent.pid, os.readlink(f"/proc/{a['pid']}/fd/{fd}")):
                    assert not helpers.same_open_file(a["pid"], fd, parent.pid, own), "the parent's epoll or waker"
    finally:
        parent.communicate("go\n" * 3, timeout=60)
    assert parent.returncode == 0
    for child in children:
        assert child["threads_before_run"] == 1
        assert child["frozen"] > 100_000, "the inherited objects are not frozen"
        assert child["cmdline"].endswith(f"-m synapse.app.generic_worker --child={child['environ']}")
    assert sorted(c["environ"] for c in children) == ["0", "1", "2"]
    assert len({c["random"] for c in children}) == len(children), "children share the random module's state"
    assert len({c["random_string"] for c in children}) == len(children)


def test_preload_refuses_when_the_parent_runs_a_thread() -> None:
    script = textwrap.dedent(
        """
        import threading, time
        threading.Thread(target=time.sleep, args=(60,), daemon=True, name="stray").start()
        from synfleet.run import preload
        preload.main(["-c", "/nonexistent/supervisord.conf"])
        """
    )
    result = _python(script)
    assert result.returncode == UNSAFE_EXIT
    assert "cannot be forked safely" in result.stderr
    assert "stray" in result.stderr


@pytest.mark.integration
def test_up_starts_each_process_its_own_python_when_forking_is_not_safe() -> None:
    """A Python that starts a thread before the import (here through sitecustomize) cannot fork
    Synapse safely: `up` says why and starts the fleet the exec way."""
    with world_readable_tempdir("synfleet-unsafe-") as directory:
        hook = directory / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(
            "import threading, time\n"
            "threading.Thread(target=time.sleep, args=(3600,), daemon=True, name='stray').start()\n"
        )
        spec = helpers.profile_with("monolith", listen={"http_port": free_port()})
        (directory / "fleet.toml").write_text(fleet_toml(spec))
        environment = {**os.environ, "PYTHONPATH": str(hook)}
        with fleet_up(directory, env=environment, timeout=300) as up:
            assert 'synapse.start = "fork" refused' in up.stdout and "stray" in up.stdout, up.stdout
            data = json.loads(synfleet("status", "--json", "--dir", str(directory)).stdout)
            supervisor = Path(f"/proc/{data['supervisor']['pid']}/cmdline").read_bytes()
            assert b"supervisord" in supervisor and b"preloaded" not in supervisor
            assert all(p["healthy"] for p in data["processes"])


def test_hazards_name_a_descriptor_the_import_left_open() -> None:
    script = textwrap.dedent(
        """
        import os
        from synfleet.run import preload
        before = preload._open_descriptors()
        import synapse.app.generic_worker
        preload._quiesce_reactor()
        assert preload.hazards(before) == [], preload.hazards(before)
        kept = open(os.devnull)
        print("\\n".join(preload.hazards(before)))
        """
    )
    result = _python(script)
    assert result.returncode == 0, result.stderr
    assert "left descriptors open" in result.stdout
    assert "/dev/null" in result.stdout


@pytest.mark.parametrize(
    ("filename", "argv", "version", "expected"),
    [
        (sys.executable, ["python", "-m", "synapse.app.generic_worker", "--config-path", "w.yaml"], None, True),
        (sys.executable, ["python", "-m", "synapse.app.homeserver", "--config-path", "h.yaml"], None, True),
        ("/usr/bin/env", ["env", "-m", "synapse.app.generic_worker"], None, False),  # another program
        (sys.executable, ["python", "-m", "synapse.app.admin_cmd"], None, False),  # not preloaded
        (sys.executable, ["python", "-X", "dev", "-m", "synapse.app.generic_worker"], None, False),
        (sys.executable, ["python", "-m", "synapse.app.generic_worker"], "0.0.1", False),  # upgraded since
    ],
)
def test_only_a_preloaded_program_of_this_python_and_release_is_forked(
    filename: str, argv: list[str], version: str | None, expected: bool
) -> None:
    preloaded = Preloaded(os.path.realpath(sys.executable), version or installed_version())
    assert (preloaded.program(filename, argv) is not None) is expected
