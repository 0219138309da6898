"""Collapsed stacks (as py-spy's ``--format raw`` and flamegraph.pl write them) and the flame graph
drawn from them, as an SVG that needs no JavaScript.

A collapsed line is ``frame;frame;...;frame count``, outermost frame first. In the graph each frame
is a rectangle as wide as the samples it was on the stack for, on top of its caller; the root
("all") is at the bottom. Each rectangle carries a ``<title>`` with the frame and its share of all
samples, which a browser shows on hover; frames too narrow to see are left out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

Stack = tuple[str, ...]
#: A frame's fill colour, from the frame's text.
Colour = Callable[[str], str]

WIDTH = 1200.0
FRAME_HEIGHT = 17
FONT_SIZE = 11
#: Roughly what one character of the monospace font takes, to cut labels that would not fit.
CHAR_WIDTH = 6.6
#: Frames narrower than this (pixels) are not drawn: invisible, and they would swell the file.
MIN_WIDTH = 0.3
MARGIN = 10
TITLE_HEIGHT = 30
LEGEND_HEIGHT = 20
#: What XML 1.0 does not allow in a document, even escaped: most control characters, lone
#: surrogates, U+FFFE and U+FFFF. py-spy's nonblocking sampling reads a running process's memory
#: and can catch a frame's name half-written, so a name may hold any of them.
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def parse_collapsed(text: str) -> Counter[Stack]:
    """The samples of each stack in collapsed text; blank or malformed lines are skipped, and a
    stack that appears twice is summed."""
    stacks: Counter[Stack] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def format_collapsed(stacks: Counter[Stack]) -> str:
    """Collapsed text, one stack a line, in a stable order (the stacks sorted)."""
    return "".join(f"{';'.join(stack)} {count}\n" for stack, count in sorted(stacks.items()) if count)


def merge(stacks: Iterable[Counter[Stack]]) -> Counter[Stack]:
    """The samples of several profiles (processes of one group) together."""
    total: Counter[Stack] = Counter()
    for one in stacks:
        total.update(one)
    return total


@dataclass
class Node:
    """A frame in the tree of stacks: the samples it was on the stack for, and its callees."""

    name: str
    samples: int = 0
    children: dict[str, Node] = field(default_factory=dict)


def tree(stacks: Counter[Stack]) -> Node:
    """The stacks as a tree under a root named "all"."""
    root = Node("all")
    for stack, count in stacks.items():
        root.samples += count
        node = root
        for frame in stack:
            node = node.children.setdefault(frame, Node(frame))
            node.samples += count
    return root


def depth(node: Node) -> int:
    """How many levels the tree has, the root's included."""
    return 1 + max((depth(child) for child in node.children.values()), default=0)


def warm_colour(frame: str) -> str:
    """The classic flame graph's warm colours, the same for the same frame in every graph."""
    value = sum(ord(c) * (i + 1) for i, c in enumerate(frame)) % 1000
    return f"rgb({205 + value % 50},{80 + value % 150},{50 + value % 40})"


def xml_text(value: str) -> str:
    """``value`` as XML character data: escaped, and what XML cannot hold replaced by U+FFFD."""
    return escape(NOT_XML.sub("\ufffd", value))


def flame_graph_svg(
    stacks: Counter[Stack], title: str, colour: Colour = warm_colour, legend: Sequence[tuple[str, str]] = ()
) -> str:
    """The flame graph of ``stacks`` as a standalone SVG document, titled ``title``, its frames
    filled by ``colour``; ``legend`` (label, colour) is drawn under the title."""
    root = tree(stacks)
    levels = depth(root)
    top = TITLE_HEIGHT + (LEGEND_HEIGHT if legend else 0)
    height = top + levels * FRAME_HEIGHT + 2 * MARGIN
    total = max(root.samples, 1)
    scale = (WIDTH - 2 * MARGIN) / total
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0f}" height="{height}" '
        f'viewBox="0 0 {WIDTH:.0f} {height}" font-family="monospace" font-size="{FONT_SIZE}">',
        f'<rect x="0" y="0" width="{WIDTH:.0f}" height="{height}" fill="#fdfdf6"/>',
        f'<text x="{WIDTH / 2:.0f}" y="{MARGIN + 14}" text-anchor="middle" font-size="15">'
        f"{xml_text(title)} ({root.samples} samples)</text>",
    ]
    x = float(MARGIN)
    for label, fill in legend:
        y = MARGIN + TITLE_HEIGHT
        parts.append(f'<rect x="{x:.0f}" y="{y}" width="12" height="12" fill={quoteattr(fill)}/>')
        parts.append(f'<text x="{x + 16:.0f}" y="{y + 10}">{xml_text(label)}</text>')
        x += 16 + CHAR_WIDTH * len(label) + 14

    def draw(node: Node, x: float, level: int) -> None:
        width = node.samples * scale
        if width < MIN_WIDTH:
            return
        y = height - MARGIN - (level + 1) * FRAME_HEIGHT
        share = 100.0 * node.samples / total
        fill = "rgb(220,220,220)" if level == 0 else colour(node.name)
        parts.append(
            f"<g><title>{xml_text(node.name)}: {node.samples} samples, {share:.2f}%</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{FRAME_HEIGHT - 1}" fill={quoteattr(fill)}/>'
        )
        fits = int((width - 4) / CHAR_WIDTH)
        if fits >= 3:
            label = node.name if len(node.name) <= fits else node.name[: fits - 2] + ".."
            parts.append(f'<text x="{x + 2:.2f}" y="{y + FRAME_HEIGHT - 5}">{xml_text(label)}</text>')
        parts.append("</g>")
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, x, level + 1)
            x += child.samples * scale

    draw(root, MARGIN, 0)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
