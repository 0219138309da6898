"""Render targets: nginx, Synapse, docker compose and the native process plan."""
