"""Who the native run's processes run as.

Run by a normal user, every process runs as that user. Run as root, nothing but supervisord and
nginx's master stays root: PostgreSQL, Redis and Synapse run as the fleet's account, nginx's
workers as an account of their own that reaches Synapse only through its inbound sockets. Both
are system accounts without a home or a shell, created the first time `synfleet up` needs them.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Accounts:
    fleet: Account
    nginx: Account


HOMELESS = ("--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin")


def lookup(name: str) -> Account | None:
    """The account ``name``, if it exists."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(name, entry.pw_uid, entry.pw_gid)


def _create(name: str) -> Account:
    useradd = require_binary("useradd")
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", *HOMELESS, "--comment", "synfleet", name],
        capture_output=True,
        text=True,
        check=False,
    )
    account = lookup(name)
    if account is None:
        raise SynfleetError(f"cannot create the system account {name!r}: {result.stderr.strip() or result.returncode}")
    return account


def ensure_accounts(report: Callable[[str], None]) -> Accounts:
    """The two accounts, created if missing (root only)."""
    found = {}
    for name in (FLEET_ACCOUNT, NGINX_ACCOUNT):
        account = lookup(name)
        if account is None:
            account = _create(name)
            report(f"created the system account {name} (uid {account.uid})")
        found[name] = account
    return Accounts(found[FLEET_ACCOUNT], found[NGINX_ACCOUNT])
