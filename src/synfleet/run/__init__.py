"""The native run: PostgreSQL, Redis, Synapse main + workers and nginx on this machine, its runtime
model (paths, processes, tiers, health) and `synfleet bench`."""
