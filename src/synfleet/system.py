"""What this machine has installed: the server binaries synfleet drives, and their versions."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from functools import cache

from synfleet.errors import SynfleetError

#: Besides PATH: this Python's scripts (supervisord in a virtualenv) and where Debian puts binaries
#: that are not on a normal user's PATH (the newest PostgreSQL first).
EXTRA_DIRS = (
    os.path.dirname(sys.executable),
    "/usr/sbin",
    "/usr/local/sbin",
    *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True),
)

#: The Debian package that provides each binary.
PACKAGES = {
    "nginx": "nginx-light",
    "redis-server": "redis-server",
    "postgres": "postgresql",
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
}


def find_binary(name: str) -> str | None:
    """The path of ``name`` on PATH or in the system directories, None if it is not installed."""
    found = shutil.which(name)
    if found:
        return found
    for directory in EXTRA_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_binary(name: str) -> str:
    """Like :func:`find_binary`, but a missing binary is an error that says how to install it."""
    found = find_binary(name)
    if found is None:
        package = PACKAGES.get(name, name)
        raise SynfleetError(
            f"{name} is not installed: install it with `apt-get install {package}` (or run scripts/setup.sh)"
        )
    return found


@cache
def nginx_version() -> tuple[int, ...] | None:
    """The installed nginx's version, None if nginx is not installed."""
    binary = find_binary("nginx")
    if binary is None:
        return None
    output = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr
    found = re.search(r"nginx/([0-9.]+)", output)
    return tuple(int(part) for part in found.group(1).split(".")) if found else None
