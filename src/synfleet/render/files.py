"""Rendered files, and how they reach the disk: atomically, and every file that holds a secret
private from the moment it exists.

Which files are private is decided here, by what they hold (:meth:`Rendered.private`), for every
renderer alike: a file is created with its final mode and group before a byte of it is written,
then renamed into place.
"""

from __future__ import annotations

import base64
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from synfleet.errors import UsageError
from synfleet.layout import SECRETS_DIR

PRIVATE = 0o600
#: A private file that the group it is given may read (the native run's files, read by the fleet's account).
GROUP_PRIVATE = 0o640
PUBLIC = 0o644
PRIVATE_DIRECTORY = 0o700
GROUP_PRIVATE_DIRECTORY = 0o750
PUBLIC_DIRECTORY = 0o755

#: A Kubernetes manifest that declares a Secret (the TLS key's, whose value synfleet did not generate).
_KUBERNETES_SECRET = re.compile(r"(?m)^kind: Secret$")


def in_secrets_directory(relative: str) -> bool:
    """Whether ``relative`` (a path inside a rendered tree) is in a secrets directory."""
    return SECRETS_DIR in PurePosixPath(relative).parts[:-1]


def secret_forms(secrets: Mapping[str, str]) -> tuple[str, ...]:
    """Each secret value as a file may hold it: as is, and base64-encoded (Kubernetes' Secrets)."""
    values = [value for value in secrets.values() if value]
    return (*values, *(base64.b64encode(value.encode()).decode() for value in values))


def holds_secret(text: str, forms: tuple[str, ...]) -> bool:
    """Whether ``text`` holds one of the ``forms`` (:func:`secret_forms`) or declares a Kubernetes Secret."""
    return any(form in text for form in forms) or bool(_KUBERNETES_SECRET.search(text))


def file_mode(private: bool, group: int | None = None) -> int:
    """A file's mode: private files readable by their owner, or also by ``group`` when given."""
    if not private:
        return PUBLIC
    return PRIVATE if group is None else GROUP_PRIVATE


def directory_mode(private: bool, group: int | None = None) -> int:
    if not private:
        return PUBLIC_DIRECTORY
    return PRIVATE_DIRECTORY if group is None else GROUP_PRIVATE_DIRECTORY


@dataclass(frozen=True)
class Rendered:
    """Files by path relative to the tree's root, the deployment's ``secrets`` (by name) that decide
    which of them are private, and empty directories to create."""

    files: dict[str, str]
    secrets: Mapping[str, str]
    directories: tuple[str, ...] = ()

    def private(self, relative: str) -> bool:
        """Whether the file at ``relative`` is private: it is in a secrets directory, holds one of
        the deployment's secrets (as is or base64-encoded), or is a Kubernetes Secret."""
        return in_secrets_directory(relative) or holds_secret(self.files[relative], secret_forms(self.secrets))

    def mode(self, relative: str, group: int | None = None) -> int:
        return file_mode(self.private(relative), group)


def create_file(path: Path, text: str, mode: int = PRIVATE, group: int | None = None) -> None:
    """Create ``path`` (which must not exist, nor be a link) with ``mode`` and ``group`` set on
    its descriptor before ``text`` is written; synced to the disk."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE)
    try:
        _fill(descriptor, text, mode, group)
    except BaseException:
        os.close(descriptor)
        path.unlink(missing_ok=True)
        raise
    os.close(descriptor)


def _fill(descriptor: int, text: str, mode: int, group: int | None) -> None:
    """Give a new, empty file its group and mode, then write ``text`` and sync it."""
    if group is not None:
        os.fchown(descriptor, -1, group)
    os.fchmod(descriptor, mode)
    data = memoryview(text.encode())
    while data:
        data = data[os.write(descriptor, data) :]
    os.fsync(descriptor)


def _make_directories(top: Path, relative: PurePosixPath, group: int | None) -> None:
    """Create ``top/relative`` and what is missing on the way, each with its mode from creation:
    a secrets directory (and what it holds) private, the others public."""
    path, private = top, False
    for part in relative.parts:
        path, private = path / part, private or part == SECRETS_DIR
        try:
            os.mkdir(path, PRIVATE_DIRECTORY)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):  # never follow a link planted in the tree
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
            continue
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:  # still empty
            if group is not None:
                os.fchown(descriptor, -1, group)
            os.fchmod(descriptor, directory_mode(private, group))
        finally:
            os.close(descriptor)


def sync(path: Path) -> None:
    """Flush the file or directory ``path`` itself (not what a link there points to) to disk: a
    directory's, so that a rename in it lasts."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_file(path: Path, text: str, mode: int = PUBLIC, group: int | None = None) -> None:
    """Write ``text`` to ``path`` atomically: a temp file in the same directory, made with ``mode``
    (and, with ``group``, given that group; a private file is then readable by it) before anything
    is written to it, synced, then renamed over ``path``."""
    if group is not None and mode == PRIVATE:
        mode = GROUP_PRIVATE
    descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, O_EXCL|O_NOFOLLOW
    try:
        try:
            _fill(descriptor, text, mode, group)
        finally:
            os.close(descriptor)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_tree(target: Path, rendered: Rendered, keep: tuple[str, ...] = ()) -> None:
    """Write ``rendered`` to ``target``: build it in a temp dir beside it (private until it is
    complete), then swap it in. What the old tree had at the paths ``keep`` (another target's
    subtree) moves into the new one."""
    parent = target.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
    old: Path | None = None
    try:
        for directory in rendered.directories:
            _make_directories(staging, PurePosixPath(directory), None)
        for relative, text in sorted(rendered.files.items()):
            _make_directories(staging, PurePosixPath(relative).parent, None)
            create_file(staging / relative, text, rendered.mode(relative))
        staging.chmod(PUBLIC_DIRECTORY)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=parent))
            os.replace(target, old / target.name)
        os.replace(staging, target)
        for relative in keep:
            kept = (old / target.name / relative) if old is not None else None
            if kept is not None and kept.exists() and not (target / relative).exists():
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                os.replace(kept, target / relative)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old / target.name, target)
        raise UsageError(f"{target}: cannot write the deployment: {exc.strerror}") from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def tree_differs(target: Path, rendered: Rendered) -> bool:
    """Whether writing ``rendered`` under ``target`` would change a file."""
    for relative, text in rendered.files.items():
        path = target / relative
        if not path.exists() or path.read_text() != text:
            return True
    return False


def update_tree(target: Path, rendered: Rendered, group: int | None = None) -> bool:
    """Write the files of ``rendered`` under ``target`` that differ, each atomically; True if any
    did. With ``group``, every file written is in that group, and private ones readable by it
    (0640). A file with the right text but another mode or group is written again, so that no
    file is ever loosened in place; that alone does not count as a change."""
    changed = False
    target.mkdir(parents=True, exist_ok=True)
    for relative, text in sorted(rendered.files.items()):
        path = target / relative
        _make_directories(target, PurePosixPath(relative).parent, group)
        mode = rendered.mode(relative, group)
        current = current_file(path)
        if current is not None and current[0] == text:
            st = current[1]
            if stat.S_IMODE(st.st_mode) == mode and (group is None or st.st_gid == group):
                continue
        else:
            changed = True
        write_file(path, text, mode, group)
    return changed


def current_file(path: Path) -> tuple[str, os.stat_result] | None:
    """The text and status of the regular file at ``path`` (not through a link); None if there is none."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link: written over
            return None
        raise
    with os.fdopen(descriptor, "rb") as stream:
        st = os.fstat(descriptor)
        if not stat.S_ISREG(st.st_mode):
            return None
        return stream.read().decode(errors="replace"), st
