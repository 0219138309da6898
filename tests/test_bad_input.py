"""Input a user can get wrong on the command line: one `synfleet: error:` line naming the file or
value, exit code 2, no traceback, nothing written. (Fleet files: test_fleet_file.py; audit inputs:
test_audit.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import synfleet

NOT_UTF8 = b"GET /_matrix/client/versions\nGET /_matrix/\xff\xfe\n"

CASES = [
    # (arguments, stdin, what the message says)
    (["init", "--dir", "/proc/x", "--server-name", "example.org"], "", "/proc/x: cannot create the directory"),
    (["init", "--dir", "/dev/null", "--server-name", "example.org"], "", "/dev/null is not a directory"),
    (["init", "--dir", "{tmp}", "--server-name", "exa mple"], "", "--server-name: must be a host name"),
    (["up", "--dir", "/proc/x"], "", "/proc/x: cannot create the directory"),
    (["render", "--dir", "/proc"], "", "/proc/secrets: cannot write secrets"),
    (["status", "--dir", "/etc/hostname"], "", "'/etc/hostname' is a file"),
    (["route", "GET"], "", "missing METHOD and URL"),
    (["route", "GET", "/x", "-H", "no colon"], "", "no colon"),
    (["ring", "--group", "nosuch"], "", "nosuch"),
    (["nosuchcommand"], "", "No such command 'nosuchcommand'"),
]


@pytest.mark.parametrize(("arguments", "stdin", "message"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_one_line_exit_2_nothing_written(tmp_path: Path, arguments: list[str], stdin: str, message: str) -> None:
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    result = synfleet(*arguments, stdin=stdin, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("synfleet: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_batch_line_that_is_not_utf8_is_reported_and_the_rest_answered(tmp_path: Path) -> None:
    batch = tmp_path / "requests.txt"
    batch.write_bytes(NOT_UTF8)
    result = synfleet("route", "--json", "--batch", str(batch), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "synfleet: error: line 2: not UTF-8 text: b'GET /_matrix/\\xff\\xfe'\n"
    answers = result.stdout.splitlines()
    assert len(answers) == 2 and '"worker": "client_reader1"' in answers[0] and '"line": 2' in answers[1]
