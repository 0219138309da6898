"""How supervisord starts a program whose children can outlive it (nginx, PostgreSQL):

    python -m synfleet.run.launch --run D/run [--user ACCOUNT] [--sockets DIR]... -- PROGRAM ARGS...

When nginx's master or PostgreSQL's postmaster is killed, its workers or backends stay: nginx's
keep the port and serve the old configuration, PostgreSQL's keep the shared memory, and the
restarted program cannot start. So first the fleet's processes of the same program that are still
running are stopped (see :mod:`synfleet.run.ownership`), then the UNIX sockets the program alone
listens on in each ``DIR`` (nginx's relays; a killed nginx leaves them, and binds no socket that
exists) are removed, then this process becomes the program, as ``ACCOUNT`` when given:
supervisord keeps the same pid.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
from pathlib import Path

from synfleet.run.accounts import lookup
from synfleet.run.ownership import fleet_processes, stop

#: Seconds left behind processes get to exit on SIGTERM before they are killed.
GRACE = 5.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="synfleet.run.launch")
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--user")
    parser.add_argument("--sockets", type=Path, action="append", default=[])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("no program to start")
    left = fleet_processes(options.run, [command[0]])
    if left:
        killed = stop(left, signal.SIGTERM, GRACE)
        print(
            f"synfleet: stopped {len(left)} {Path(command[0]).name} process(es) left from an earlier start "
            f"({', '.join(str(p.pid) for p in left)}; killed: {len(killed)})",
            file=sys.stderr,
            flush=True,
        )
    for directory in options.sockets:
        _remove_sockets(directory)
    if options.user:
        account = lookup(options.user)
        if account is None:
            parser.error(f"no account {options.user!r}")
        account.switch()
    os.execv(command[0], command)


def _remove_sockets(directory: Path) -> None:
    """The UNIX sockets in ``directory`` (never what a link there points to)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        for entry in os.scandir(descriptor):
            if stat.S_ISSOCK(os.lstat(entry.name, dir_fd=descriptor).st_mode):
                os.unlink(entry.name, dir_fd=descriptor)
    finally:
        os.close(descriptor)


if __name__ == "__main__":
    main()
