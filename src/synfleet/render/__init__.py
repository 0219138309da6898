"""Render targets: nginx, Synapse and docker compose from shared templates, and which Synapse
processes run; the native run renders its directory with the same targets."""
