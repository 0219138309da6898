"""The fork start of the native run: supervisord in a Python that has imported Synapse once.

    python -m synfleet.run.preload -c D/run/supervisord.conf [--nodaemon]

Importing Synapse costs each process about a second of CPU and 110 MB of memory. Here the
supervisor imports it once; supervisord then starts each Synapse program as usual (its own pid,
its user, its log pipes, restarted when it dies), except that the forked child does not exec a
new Python: it becomes the program in place and shares the imported pages with every other
process of the fleet until it writes to them.

What the import leaves behind that must not be shared across a fork, and how each is handled:

- Twisted's reactor is installed at import, with an epoll descriptor and a waker pipe registered
  in it (Synapse wraps the epoll object to time reactor ticks). The parent closes both once it has
  imported; each child makes its own (:func:`_renew_reactor`), so no two processes share a poller
  or a waker.
- Open files: after the import the parent holds no descriptor the import made (checked, see
  :func:`hazards`); supervisord closes every other descriptor in the child, as it does before exec.
- Random state: Python reseeds the ``random`` module in every forked child; Synapse's tokens come
  from ``secrets`` (the kernel), OpenSSL reseeds after a fork on its own.
- Threads: a fork copies only the forking thread. The parent must have none (checked); the
  child starts its own thread pools, as Synapse creates them when it starts.
- Signal handlers, ``atexit`` callbacks and stdio buffers of supervisord are dropped in the child.
- The garbage collector: the parent freezes what the import made (``gc.freeze``), and the child
  freezes everything it inherits, so collections never write to shared pages.

A child execs a fresh Python instead (the exec start) whenever it cannot be forked safely: the
program is not a preloaded Synapse module run by this Python, or the installed Synapse is no
longer the one imported (after ``pip install -U``, until the next ``down`` and ``up``).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import importlib.metadata
import io
import os
import select
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NoReturn

from synfleet.model.synapse import APP_MODULES

#: The Synapse programs the fleet runs: main, and every worker.
PRELOADED = APP_MODULES
#: Synapse's distribution, whose version the preloaded modules are.
DISTRIBUTION = "matrix-synapse"
#: How supervisord's pid file tells this start from the plain one.
MODULE = "synfleet.run.preload"
#: The exit status that says forking this Synapse is not safe (the caller starts a plain supervisord).
UNSAFE_EXIT = 3


class UnsafeFork(Exception):
    """Forking this Synapse is not safe: what was found."""


@dataclass(frozen=True)
class Preloaded:
    """What the parent imported, for the children to check they may use it."""

    interpreter: str  # the real path of this Python
    version: str  # Synapse's version, as imported

    def program(self, filename: str, argv: list[str]) -> str | None:
        """The preloaded module ``filename argv`` runs, if a forked child may become it."""
        if len(argv) < 3 or argv[1] != "-m" or argv[2] not in PRELOADED:
            return None
        if os.path.realpath(filename) != self.interpreter:
            return None
        if installed_version() != self.version or threading.active_count() != 1:
            return None
        return argv[2]


def installed_version() -> str:
    """The version of Synapse installed now (it may have changed since the import)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _open_descriptors() -> set[int]:
    """This process's open descriptors (not the one listing them used)."""
    return {int(fd) for fd in os.listdir("/proc/self/fd") if _is_open(int(fd))}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _describe(fd: int) -> str:
    try:
        return f"{fd} ({os.readlink(f'/proc/self/fd/{fd}')})"
    except OSError:
        return str(fd)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _epoll(reactor: Any) -> Any:
    """The reactor's epoll object, inside Synapse's tick-timing wrapper or not."""
    poller = reactor._poller
    return poller if isinstance(poller, select.epoll) else poller._wrapped


def hazards(before: set[int]) -> list[str]:
    """What makes the imported state unsafe to fork (after :func:`_quiesce_reactor`)."""
    found = []
    if threading.active_count() != 1:
        found.append(f"threads run in the importing Python: {', '.join(t.name for t in threading.enumerate())}")
    reactor = _reactor()
    if type(reactor).__name__ != "EPollReactor":
        found.append(f"the reactor is {type(reactor).__name__}, not Twisted's epoll reactor")
    else:
        if reactor._started or reactor.running:
            found.append("the reactor has been started")
        if reactor._reads or reactor._writes or reactor._selectables:
            found.append(f"the reactor watches descriptors: {sorted(reactor._selectables)}")
        poller = reactor._poller
        wrapped = getattr(getattr(poller, "_wrapped_method", None), "_wrapped", None)
        if not isinstance(poller, select.epoll) and not (
            isinstance(getattr(poller, "_wrapped", None), select.epoll)
            and getattr(wrapped, "__self__", None) is poller._wrapped
        ):
            found.append(f"the reactor's poller is an unknown {type(poller).__name__}")
    if left := _open_descriptors() - before:
        found.append(f"the import left descriptors open: {', '.join(_describe(fd) for fd in sorted(left))}")
    return found


def _quiesce_reactor() -> None:
    """Close what the installed reactor holds (its waker pipe and epoll); children make their own."""
    reactor = _reactor()
    waker = getattr(reactor, "waker", None)
    if waker is not None:
        reactor.removeReader(waker)
        reactor._internalReaders.discard(waker)
        waker.connectionLost(None)
        reactor.waker = None
    _epoll(reactor).close()


def _renew_reactor() -> None:
    """Give this child its own epoll and waker (the parent closed its own)."""
    reactor = _reactor()
    fresh = select.epoll(1024)
    poller = reactor._poller
    if isinstance(poller, select.epoll):
        reactor._poller = fresh
    else:  # Synapse's wrapper, which times each poll
        poller._wrapped = fresh
        poller._wrapped_method._wrapped = fresh.poll
        poller._wrapped_method.last_polled = time.time()
    reactor.installWaker()


def preload() -> Preloaded:
    """Import Synapse, leave nothing behind a fork would share, and freeze what was imported."""
    gc.disable()  # no collection in the middle of the import leaves holes in its pages
    before = _open_descriptors()
    for name in PRELOADED:
        importlib.import_module(name)
    importlib.import_module("setproctitle")
    try:
        _quiesce_reactor()
    except (AttributeError, KeyError, OSError) as unknown:
        raise UnsafeFork(f"Twisted's reactor is not the one synfleet knows how to renew ({unknown!r})") from None
    if found := hazards(before):
        raise UnsafeFork("; ".join(found))
    gc.collect()
    gc.freeze()
    gc.enable()
    return Preloaded(os.path.realpath(sys.executable), installed_version())


def _reset_signals() -> None:
    """The handlers a new Python starts with: supervisord's own are not this program's."""
    for number in signal.valid_signals():
        handler = signal.getsignal(number)
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)


def _reopen_stdio(env: dict[str, str]) -> None:
    """New stdout and stderr on the descriptors supervisord gave this child."""
    write_through = bool(env.get("PYTHONUNBUFFERED"))
    for name, fd, errors in (("stdout", 1, "strict"), ("stderr", 2, "backslashreplace")):
        stream = io.TextIOWrapper(
            open(fd, "wb", buffering=0 if write_through else -1, closefd=False),  # noqa: SIM115 (it is stdio)
            encoding=getattr(sys, name).encoding,
            errors=errors,
            line_buffering=True,
            write_through=write_through,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _exit_code(exit: SystemExit) -> int:
    if exit.code is None or isinstance(exit.code, int):
        return exit.code or 0
    print(exit.code, file=sys.stderr)
    return 1


def _title(name: str, command: str) -> None:
    """What `ps` shows: the command line, and the name (comm) an exec of ``name`` would have."""
    setproctitle = importlib.import_module("setproctitle")
    setproctitle.setproctitle(command)
    setproctitle.setthreadtitle(os.path.basename(name)[:15])


def prepare_child(argv: list[str], env: dict[str, str]) -> None:
    """In a forked child: nothing of the parent's that must not be shared is left in use; the
    process looks and runs as a new Python started with ``argv`` and ``env`` would."""
    gc.freeze()  # what this child inherited stays out of its collections, and shared
    _title(argv[0], shlex.join(argv))  # as for an exec start
    _reset_signals()
    atexit._clear()
    os.environ.clear()
    os.environ.update(env)
    _reopen_stdio(env)
    _renew_reactor()


def become(module: ModuleType, argv: list[str], env: dict[str, str]) -> NoReturn:
    """In a forked child: run ``module`` as ``python -m`` would, with ``argv``, and exit."""
    code = 1
    try:
        prepare_child(argv, env)
        sys.argv = [str(module.__file__), *argv[3:]]
        module.main()
        code = 0
    except SystemExit as exit:
        code = _exit_code(exit)
    except BaseException:
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


def install(preloaded: Preloaded) -> None:
    """Make supervisord fork the preloaded programs instead of executing them."""
    from supervisor.options import ServerOptions

    real_execve: Callable[[Any, str, list[str], dict[str, str]], None] = ServerOptions.execve
    real_fork: Callable[[Any], int] = ServerOptions.fork

    def fork(self: Any) -> int:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # nothing buffered here is written twice
        return real_fork(self)

    def execve(self: Any, filename: str, argv: list[str], env: dict[str, str]) -> None:
        program = preloaded.program(filename, argv)
        if program is not None:
            become(sys.modules[program], argv, env)
        real_execve(self, filename, argv, env)

    ServerOptions.fork = fork
    ServerOptions.execve = execve


def main(argv: list[str] | None = None) -> None:
    """``--check``: only say whether Synapse can be forked safely here (exit status 0 or
    :data:`UNSAFE_EXIT`); otherwise supervisord's own arguments."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        preloaded = preload()
    except UnsafeFork as unsafe:
        print(f"Synapse cannot be forked safely here: {unsafe}", file=sys.stderr)
        sys.exit(UNSAFE_EXIT)
    if arguments == ["--check"]:
        return
    install(preloaded)
    from supervisor import supervisord

    _title("supervisord", f"{shlex.join(['supervisord', *arguments])} (Synapse preloaded by {MODULE})")
    supervisord.main(args=arguments)


if __name__ == "__main__":
    main()
