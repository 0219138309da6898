"""`synfleet service`: a systemd unit that runs a fleet's supervisor in the foreground, starts the
fleet at boot, restarts the supervisor when it dies, and stops the fleet with `synfleet down`."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from synfleet.errors import SynfleetError, UsageError
from synfleet.render.files import write_file
from synfleet.render.templating import render
from synfleet.run.accounts import as_root
from synfleet.run.paths import RunPaths
from synfleet.system import fleet_python, require_binary

UNIT_DIR = Path("/etc/systemd/system")
#: Present when systemd manages this machine (what sd_booted(3) checks).
SYSTEMD_RUNNING = Path("/run/systemd/system")


def unit_name(paths: RunPaths) -> str:
    """One unit per deployment directory (and host of a fleet on several): its name, and a short
    hash of its full path."""
    directory = str(paths.directory.resolve())
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(directory).name).strip("-") or "fleet"
    host = f"-{paths.host}" if paths.host else ""
    return f"synfleet-{slug}{host}-{hashlib.sha256(directory.encode()).hexdigest()[:8]}.service"


def unit_text(paths: RunPaths) -> str:
    return render("synfleet.service.j2", directory=paths.directory.resolve(), host=paths.host, python=fleet_python())


def _systemctl(*args: str) -> None:
    command = [require_binary("systemctl"), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SynfleetError(f"`{' '.join(command)}` failed: {(done.stderr or done.stdout).strip()}")


def _check_systemd() -> None:
    if not SYSTEMD_RUNNING.is_dir():
        raise UsageError(
            f"systemd is not running on this machine ({SYSTEMD_RUNNING} is missing); nothing was written. "
            "Print the unit with `synfleet service install --print` to use it elsewhere"
        )
    if not as_root():
        raise UsageError("installing a systemd unit needs root")


def install(paths: RunPaths) -> Path:
    """Write, enable and start the fleet's unit; its path."""
    _check_systemd()
    path = UNIT_DIR / unit_name(paths)
    write_file(path, unit_text(paths))
    _systemctl("daemon-reload")
    _systemctl("enable", "--now", path.name)
    return path


def remove(paths: RunPaths) -> Path:
    """Stop and disable the fleet's unit and remove it; its path."""
    _check_systemd()
    path = UNIT_DIR / unit_name(paths)
    if not path.exists():
        raise UsageError(f"{path}: no unit is installed for {paths.directory}")
    _systemctl("disable", "--now", path.name)
    path.unlink()
    _systemctl("daemon-reload")
    return path
