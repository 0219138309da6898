"""Where a directive of a parsed config really is.

crossplane's combined output names each directive's file, but a directive that follows an
``include`` in the same block is named after the included file (crossplane 0.5.8 reuses the loop
variable). Each file parsed on its own says which one holds a directive at a given line.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import crossplane

from synfleet.nginx.config import Directive, walk

_Key = tuple[str, int, tuple[str, ...]]


def _key(directive: Directive) -> _Key:
    return directive["directive"], directive.get("line", 0), tuple(directive.get("args", ()))


class DirectiveFiles:
    """The file of each directive of the config at ``conf``, for messages that say file:line."""

    def __init__(self, conf: Path) -> None:
        payload = crossplane.parse(str(conf), catch_errors=True, single=False)
        self._files: dict[_Key, list[str]] = defaultdict(list)
        for config in payload["config"]:
            for directive in walk(config["parsed"]):
                self._files[_key(directive)].append(config["file"])

    def where(self, directive: Directive) -> str:
        """``name:line`` of the file that holds ``directive``."""
        named = directive.get("file", "?")
        files = self._files.get(_key(directive), [])
        file = named if named in files or not files else files[0]
        return f"{Path(file).name}:{directive.get('line', '?')}"
