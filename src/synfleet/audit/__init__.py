"""`synfleet audit`: other people's nginx configs for Synapse workers, checked against the route table."""

from synfleet.audit.pipeline import audit

__all__ = ["audit"]
