"""Errors a user can cause. Each message reads as one line: what is wrong, and where."""

from __future__ import annotations


class SynfleetError(Exception):
    """Base class: the CLI prints the message and exits with :attr:`exit_code`, no traceback."""

    exit_code = 1


class UsageError(SynfleetError):
    """Bad input on the command line or in a file the user wrote."""

    exit_code = 2


class BadRequest(UsageError):
    """A request (method, URL or header) that nginx would reject or that cannot be parsed."""


class FleetError(UsageError):
    """An invalid fleet file or fleet description."""
