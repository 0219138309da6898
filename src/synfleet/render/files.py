"""Rendered files, and how they reach the disk: atomically, secrets readable by the owner only."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from synfleet.errors import UsageError
from synfleet.layout import DEPLOY_POSTGRES_ENV, SECRETS_DIR, SHARED_CONFIG, SYNAPSE_DIR

PRIVATE = 0o600
PUBLIC = 0o644

#: Files holding secrets (the database password), by path relative to the deployment directory;
#: and every file in a secrets directory.
PRIVATE_FILES = frozenset({f"{SYNAPSE_DIR}/{SHARED_CONFIG}", DEPLOY_POSTGRES_ENV})


@dataclass(frozen=True)
class Rendered:
    """Files by path relative to the deployment directory, empty directories to create, and files
    besides :data:`PRIVATE_FILES` that hold secrets."""

    files: dict[str, str]
    directories: tuple[str, ...] = ()
    private: frozenset[str] = frozenset()

    def mode(self, relative: str) -> int:
        private = relative in PRIVATE_FILES or relative in self.private or relative.startswith(f"{SECRETS_DIR}/")
        return PRIVATE if private else PUBLIC


def write_file(path: Path, text: str, mode: int = PUBLIC) -> None:
    """Write ``text`` to ``path`` atomically: a temp file in the same directory, then rename."""
    descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_tree(target: Path, rendered: Rendered, keep: tuple[str, ...] = ()) -> None:
    """Write ``rendered`` to ``target``: build it in a temp dir beside it, then swap it in. What the
    old tree had at the paths ``keep`` (another target's subtree) moves into the new one."""
    parent = target.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
    old: Path | None = None
    try:
        staging.chmod(0o755)
        for directory in rendered.directories:
            (staging / directory).mkdir(parents=True, exist_ok=True)
        for relative, text in sorted(rendered.files.items()):
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(rendered.mode(relative))
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


def update_tree(target: Path, rendered: Rendered) -> bool:
    """Write the files of ``rendered`` under ``target`` that differ, each atomically; True if any did."""
    changed = False
    for relative, text in sorted(rendered.files.items()):
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.read_text() == text:
            continue
        write_file(path, text, rendered.mode(relative))
        changed = True
    return changed


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """Give ``top`` and everything under it to ``uid``:``gid`` (symlinks themselves, not their targets)."""
    for root, directories, files in os.walk(top):
        for name in (root, *(os.path.join(root, entry) for entry in directories + files)):
            os.chown(name, uid, gid, follow_symlinks=False)
