"""The podman settings the lab runs with come from a file no other account can have written."""

from __future__ import annotations

import os
import pwd
import tempfile
from pathlib import Path

import pytest

import helpers
from synfleet.lab.podman import _containers_conf_file


@pytest.mark.prerequisite(helpers.root_reason("making a file of another account"))
def test_a_settings_file_another_account_made_first_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # a sticky directory anyone writes, like /tmp
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    text = '[engine]\ncgroup_manager = "cgroupfs"\n'
    first = _containers_conf_file(text)
    assert first.parent == shared and first.read_text() == text and _containers_conf_file(text) == first
    first.unlink()
    nobody = pwd.getpwnam("nobody")
    first.write_text('[engine]\nhooks_dir = ["/home/someone/hooks"]\n')
    os.chown(first, nobody.pw_uid, nobody.pw_gid)
    # Replaced by this account's own (root may rename over it; another account gets a file of its own).
    mine = _containers_conf_file(text)
    assert mine.read_text() == text and mine.stat().st_uid == os.geteuid() and not mine.stat().st_mode & 0o022
