"""The one error the lab raises: a lab that cannot be built, used or taken down, said in one line."""

from __future__ import annotations

from synfleet.errors import SynfleetError


class LabError(SynfleetError):
    """A lab could not be set up or torn down: a missing tool, a bad host name, a command that failed."""
