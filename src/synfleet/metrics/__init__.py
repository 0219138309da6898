"""Monitoring: what Prometheus scrapes from every Synapse process and the Grafana dashboard that shows it."""
