"""How synfleet starts and tests nginx: the one builder of nginx command lines, the installed
version, and nginx run in the foreground in a prefix of its own."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from synfleet.errors import SynfleetError
from synfleet.system import find_binary, require_binary


@cache
def nginx_version() -> tuple[int, ...] | None:
    """The installed nginx's version, None if nginx is not installed."""
    binary = find_binary("nginx")
    if binary is None:
        return None
    output = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr
    found = re.search(r"nginx/([0-9.]+)", output)
    return tuple(int(part) for part in found.group(1).split(".")) if found else None


@cache
def stream_module() -> str:
    """The stream module's file when the installed nginx has it as a dynamic module ("" when it is
    built in); an error naming the package when nginx has none."""
    binary = require_binary("nginx")
    output = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False).stderr
    if re.search(r"--with-stream(?:\s|$)", output):
        return ""
    found = re.search(r"--modules-path=(\S+)", output)
    module = Path(found.group(1) if found else "/usr/lib/nginx/modules") / "ngx_stream_module.so"
    if "--with-stream=dynamic" in output and module.exists():
        return str(module)
    raise SynfleetError(
        "nginx has no stream module, which carries the links between the hosts of the fleet: "
        "install it (Debian: apt-get install libnginx-mod-stream)"
    )


def version_text() -> str:
    return ".".join(map(str, nginx_version() or ()))


def http2_directive_supported(version: tuple[int, ...] | None) -> bool:
    """``http2 on;`` exists since nginx 1.25.1; older versions spell it ``listen ... ssl http2``."""
    return version is None or version >= (1, 25, 1)


def command_line(
    prefix: Path | str,
    conf: Path | str,
    error_log: Path | str,
    *,
    test: bool = False,
    pid: Path | str | None = None,
    binary: str | None = None,
) -> list[str]:
    """nginx on ``conf`` with ``prefix`` as its prefix and ``error_log`` for errors before the
    config's own ``error_log`` applies: in the foreground, or with ``test`` as ``nginx -t -q``.
    ``pid`` overrides the config's pid file (``nginx -t`` of a config whose pid path is elsewhere)."""
    command = [binary or require_binary("nginx")]
    if test:
        command += ["-t", "-q"]
    command += ["-p", str(prefix), "-e", str(error_log), "-c", str(conf)]
    directives = ("" if test else "daemon off;") + (f"pid {pid};" if pid else "")
    return [*command, "-g", directives]


def test_config(prefix: Path, conf: Path, error_log: Path, pid: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t -q`` on ``conf``; the result carries nginx's own messages."""
    return subprocess.run(
        command_line(prefix, conf, error_log, test=True, pid=pid), capture_output=True, text=True, check=False
    )


@contextmanager
def world_readable_tempdir(prefix: str) -> Iterator[Path]:
    """A temp dir nginx workers (which drop privileges when started as root) can traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class NginxProcess:
    """nginx started in the foreground on a config directory (its prefix); stopped by PID."""

    conf_dir: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, wait_for_port: int, timeout: float = 15.0) -> None:
        self.process = subprocess.Popen(
            command_line(self.conf_dir, self.conf_dir / "nginx.conf", self.conf_dir / "startup-error.log"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                raise SynfleetError(f"nginx exited with {self.process.returncode}: {output.strip()}")
            try:
                socket.create_connection(("127.0.0.1", wait_for_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SynfleetError(f"nginx did not listen on 127.0.0.1:{wait_for_port} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT flushes buffered logs), forced after ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
