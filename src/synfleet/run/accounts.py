"""Who the native run's processes run as.

Run by a normal user, every process runs as that user. Run as root, nothing but supervisord and
nginx's master stays root: PostgreSQL, Redis and Synapse run as the fleet's account, nginx's
workers as an account of their own that reaches Synapse only through its inbound sockets. Both
are system accounts without a home or a shell, created the first time `synfleet up` needs them.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from synfleet.errors import SynfleetError
from synfleet.system import require_binary

#: PostgreSQL, Redis and Synapse: owns the run directory's config, secrets, data and sockets.
FLEET_ACCOUNT = "synfleet"
#: nginx's worker processes: may connect to the inbound sockets, nothing else of the fleet's.
NGINX_ACCOUNT = "synfleet-nginx"


def as_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int

    def switch(self) -> None:
        """Become this account (in a child process, before exec)."""
        os.setgroups([])
        os.setgid(self.gid)
        os.setuid(self.uid)


def run_as(account: Account | None, work: Callable[[], list[str]]) -> list[str]:
    """``work()`` as ``account``: in a forked child that becomes it, before doing anything, so that
    root acts there with that account's rights alone (opens its files, follows its links, logs in
    as it); directly when ``account`` is None (run by a normal user). The child's result, or its
    error as a SynfleetError, comes back as JSON: nothing the child says is executed."""
    if account is None:
        return work()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's coverage is not collected
        status = 1
        try:
            os.close(read)
            os.chdir("/")
            account.switch()
            try:
                answer: dict[str, object] = {"result": work()}
            except SynfleetError as error:
                answer = {"error": str(error)}
            except Exception as error:
                answer = {"error": f"{type(error).__name__}: {error}"}
            with os.fdopen(write, "w") as pipe:
                json.dump(answer, pipe)
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(child, 0)
    try:
        found: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError:
        raise SynfleetError(f"a process running as {account.name} ended without an answer (status {status})") from None
    if "error" in found:
        raise SynfleetError(str(found["error"]))
    return [str(line) for line in found["result"]]


@dataclass(frozen=True)
class Accounts:
    fleet: Account
    nginx: Account


HOME, SHELL = "/nonexistent", "/usr/sbin/nologin"
#: How synfleet marks the accounts it creates (their comment field).
COMMENT = "synfleet"


def lookup(name: str) -> Account | None:
    """The account ``name``, if it exists."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(name, entry.pw_uid, entry.pw_gid)


def _ours(name: str) -> None:
    """Files go only to an account synfleet made: a system account without a home or a shell, with
    synfleet's comment; an account of that name made by someone else is refused."""
    entry = pwd.getpwnam(name)
    if (entry.pw_gecos, entry.pw_dir, os.path.basename(entry.pw_shell)) != (COMMENT, HOME, "nologin"):
        raise SynfleetError(
            f"the account {name!r} exists but synfleet did not create it (comment {entry.pw_gecos!r}, home "
            f"{entry.pw_dir}, shell {entry.pw_shell}); synfleet gives the fleet's files only to its own accounts: "
            "rename or remove that account"
        )


def _create(name: str) -> Account:
    useradd = require_binary("useradd")
    homeless = ("--no-create-home", "--home-dir", HOME, "--shell", SHELL)
    result = subprocess.run(
        [useradd, "--system", "--user-group", *homeless, "--comment", COMMENT, name],
        capture_output=True,
        text=True,
        check=False,
    )
    account = lookup(name)
    if account is None:
        raise SynfleetError(f"cannot create the system account {name!r}: {result.stderr.strip() or result.returncode}")
    return account


def ensure_accounts(report: Callable[[str], None]) -> Accounts:
    """The two accounts, created if missing (root only); never accounts someone else made."""
    found = {}
    for name in (FLEET_ACCOUNT, NGINX_ACCOUNT):
        account = lookup(name)
        if account is None:
            account = _create(name)
            report(f"created the system account {name} (uid {account.uid})")
        _ours(name)
        found[name] = account
    return Accounts(found[FLEET_ACCOUNT], found[NGINX_ACCOUNT])
