"""Checks of nginx and Synapse configs: our rendered deployments (check) and existing ones (audit)."""
