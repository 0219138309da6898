"""How every command prints: on a terminal, rich fitted to its width; into a pipe or a file (cron,
CI logs, ``ssh host synfleet status``), every table cell and every line whole, whatever COLUMNS says.
A line that names a command to run is never folded, at any width."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

#: The width of output that is not a terminal: wider than any line or table synfleet prints, so
#: nothing is cut (``client_…``) or folded; tables still take only the width they need.
UNCUT_WIDTH = 100_000


def stdout_is_terminal() -> bool:
    """Standard output is a terminal (not a pipe, a file or a closed stream). Decided by the stream
    itself: FORCE_COLOR and the like ask for colours, not for lines cut at a terminal's width."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def output_console() -> Console:
    """The console a command prints to: the terminal's width on a terminal, else uncut."""
    if stdout_is_terminal():
        return Console(highlight=False)
    return Console(highlight=False, width=UNCUT_WIDTH)


def print_line(console: Console, text: str) -> None:
    """Print ``text`` (rich markup) as one line, never folded by rich: for a line naming a command
    to copy. On a narrow terminal the terminal folds it on screen only, so a copy is one line."""
    console.print(text, soft_wrap=True)


def reporter(console: Console, markup: bool = True) -> Callable[[str], None]:
    """A progress report that prints each line indented, as one line (see :func:`print_line`);
    without ``markup``, the lines are printed as they are."""

    def report(line: str) -> None:
        print_line(console, "  " + (line if markup else escape(line)))

    return report
