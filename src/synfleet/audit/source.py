"""What `synfleet audit` is given: one nginx config file, or a directory with nginx.conf and the files
it includes.

Anything that is not a readable nginx config (a missing path, a device or FIFO, an empty, binary,
non-UTF-8 or unreadable file) is refused here, before a copy is made or nginx runs, with one message
that names the path as the user gave it. Paths in the working copy are named back the same way.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import crossplane

from synfleet.errors import UsageError

MAIN_FILE = "nginx.conf"

_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
)


def file_type(mode: int) -> str:
    """``mode``'s file type in words, for anything but a regular file."""
    return next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")


def _os_reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def _mode(path: Path, shown: str) -> int:
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such file or directory") from None
    except OSError as error:
        raise UsageError(f"{shown}: cannot be read: {_os_reason(error)}") from None


def check_config_file(path: Path, shown: str, main: bool) -> None:
    """``path`` is a file nginx can read as config: regular, readable, UTF-8 text without NUL bytes
    and, for the main file, not empty. UsageError naming ``shown`` otherwise."""
    mode = _mode(path, shown)
    if not stat.S_ISREG(mode):
        raise UsageError(f"{shown}: {file_type(mode)}, not an nginx config file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"{shown}: cannot be read: {_os_reason(error)}") from None
    if main and not data.strip():
        raise UsageError(f"{shown}: empty file, not an nginx config")
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise UsageError(f"{shown}: binary data (a NUL byte on line {line}), not an nginx config")
    try:
        data.decode()
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UsageError(
            f"{shown}: not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}), not an nginx config synfleet "
            "can read"
        ) from None


@dataclass(frozen=True)
class ConfigSource:
    """A config given to `synfleet audit`, checked: ``given`` as the user wrote it, ``main`` its main file."""

    given: Path
    main: Path

    @classmethod
    def check(cls, given: Path) -> ConfigSource:
        """The config at ``given``, or UsageError saying, about ``given``, why it is none."""
        main = given
        if stat.S_ISDIR(_mode(given, str(given))):
            main = given / MAIN_FILE
            try:
                main.lstat()
            except FileNotFoundError:
                raise UsageError(f"{given}: no {MAIN_FILE} in this directory") from None
            except OSError as error:
                raise UsageError(f"{given}: cannot be read: {_os_reason(error)}") from None
        check_config_file(main, str(main), main=True)
        source = cls(given, main)
        source._check_includes()
        return source

    @property
    def is_directory(self) -> bool:
        return self.main != self.given

    def _check_includes(self) -> None:
        """Every file the main file includes is readable UTF-8 text (a missing one is left to `nginx -t`)."""
        payload = crossplane.parse(str(self.main), catch_errors=True, single=False, onerror=lambda error: error)
        for error in payload["errors"]:
            cause = error.get("callback")
            if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
                where = f"{error['file']}:{error['line']}" if error.get("line") else error["file"]
                raise UsageError(
                    f"{cause.filename or where}: cannot be read: {_os_reason(cause)} (included at {where})"
                )
        for config in payload["config"][1:]:
            check_config_file(Path(config["file"]), config["file"], main=False)

    def in_user_terms(self, text: str, work: Path) -> str:
        """``text`` with paths in the working copy ``work`` named as the user knows them."""
        if self.is_directory:
            return text.replace(str(work), str(self.given))
        return text.replace(str(work / self.main.name), str(self.given)).replace(str(work), str(self.given.parent))
