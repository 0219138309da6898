"""The native run: PostgreSQL, Redis, Synapse main + workers and nginx on this machine."""
