"""synfleet: a Synapse homeserver split into workers behind nginx, rendered from one fleet file."""

__version__ = "0.1.0"
