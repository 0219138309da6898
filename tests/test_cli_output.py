"""What the commands print into a pipe or a file (every table cell and every line whole, at any
COLUMNS) and on a narrow or wide terminal (a command to copy stays on one line). The running
fleet's (status, top, up) are checked in test_e2e.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import synfleet
from helpers import columns_env, profile_with, synfleet_in_terminal
from synfleet.model.fleet import Role
from synfleet.nginx.binary.command import world_readable_tempdir
from synfleet.routing.plan import upstream_name
from synfleet.run.paths import RunPaths, deployed_plan

#: A room ID longer than any terminal is wide.
LONG_ROOM = "!" + "a" * 150 + ":example.org"


def cells(output: str) -> set[str]:
    """Every cell of the tables in ``output``, stripped."""
    return {cell.strip() for line in output.splitlines() for cell in re.split(r"[│┃]|\s{2,}", line)}


@pytest.mark.parametrize("columns", [40, 200])
def test_route_into_a_pipe_prints_every_value_whole(columns: int) -> None:
    url = f"/_matrix/client/v3/rooms/{LONG_ROOM}/messages"
    table = synfleet("route", "GET", url, env=columns_env(columns))
    decided = json.loads(synfleet("route", "--json", "GET", url).stdout)
    assert table.returncode == 0, table.stderr
    for key in ("uri", "rule", "target", "upstream", "worker", "key"):
        assert decided[key] in cells(table.stdout), (key, decided[key], table.stdout)


@pytest.mark.parametrize("columns", [20, 40, 200])
def test_ring_into_a_pipe_prints_every_worker_and_line_whole(tmp_path: Path, columns: int) -> None:
    """The seed's room workers, and the one growing the group adds; the summary on one line."""
    result = synfleet("ring", "--keys", "1000", "--dir", str(tmp_path), env=columns_env(columns))
    assert result.returncode == 0, result.stderr
    grown = deployed_plan(RunPaths(tmp_path), profile_with("seed")).grown(Role.ROOMS, 1)
    for worker in grown.upstreams[upstream_name(Role.ROOMS)].workers:
        assert re.search(rf"│ {worker}\s+│\s+\d+ │", result.stdout), (worker, result.stdout)
    assert re.search(r"^growing 4 -> 5 moves \d+ of 1000 keys \(.*\)$", result.stdout, re.MULTILINE), result.stdout


def hints(output: str) -> list[str]:
    """The lines of ``output`` that name a command to run."""
    return [line for line in output.splitlines() if re.search(r"next:|with:|with docker compose:|synfleet \w", line)]


@pytest.mark.parametrize("columns", [40, 200])
def test_init_render_and_status_hints_stay_on_one_line(columns: int) -> None:
    """On a terminal and into a pipe, whatever its width: every command a hint names is whole."""
    lines: list[str] = []
    with world_readable_tempdir("synfleet-hints-") as scratch:  # status needs a directory the fleet can reach
        directory = str(scratch / ("a-deployment-directory-with-a-long-name-" * 2))
        for command in (
            ("init", "--server-name", "example.org", "--force"),
            ("render",),
            ("status",),
        ):
            lines += hints(synfleet_in_terminal(*command, "--dir", directory, columns=columns))
            lines += hints(synfleet(*command, "--dir", directory, env=columns_env(columns)).stdout)
    expected = [
        f"next: synfleet render --dir {directory}",
        f"start with docker compose: cd {directory}/deploy && docker compose up -d",
        "(start it with: synfleet up)",
    ]
    for text in expected:
        assert len([line for line in lines if text in line]) == 2, (text, "\n".join(lines))  # terminal, pipe
