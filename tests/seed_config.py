"""The seed's nginx config, extracted as printed from the guide in ../shared/seed/."""

from __future__ import annotations

from pathlib import Path

import helpers

GUIDE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "synapse-docker-nginx-guide.txt"

# (file, first line, last line) of each config as printed in the guide.
SECTIONS = (
    ("nginx.conf", "# Worker Performance", "This specifically just covers HTTP"),
    ("upstreams.conf", "# Client non-room requests", "A major change from the default design"),
    ("maps.conf", "# Client username from MXID", "locations.conf"),
    ("locations.conf", "### MAIN OVERRIDES ###", "It starts by forcing some requests"),
    ("proxy.conf", "proxy_connect_timeout 2s;", "private.conf"),
    ("private.conf", "# Access list for non-public access", None),
)


def extract_seed(target: Path) -> Path:
    """Write the seed's six files into ``target``, each from its first line to the prose after it.
    Skips the calling test when the guide is not beside this checkout (fails it with CI=true)."""
    if not GUIDE.exists():
        helpers.require(f"the seed guide is not at {GUIDE}")
    lines = GUIDE.read_text().splitlines()
    target.mkdir(parents=True, exist_ok=True)
    for name, first, end in SECTIONS:
        start = next(i for i, line in enumerate(lines) if line.startswith(first))
        stop = next((i for i in range(start + 1, len(lines)) if end and lines[i].startswith(end)), len(lines))
        body = lines[start:stop]
        if name == "proxy.conf":
            body = [line for line in body if line.startswith("proxy_")]
        if name == "upstreams.conf":
            body = body[: max(i for i, line in enumerate(body) if line.strip() == "}") + 1]
        (target / name).write_text("\n".join(body) + "\n")
    return target
