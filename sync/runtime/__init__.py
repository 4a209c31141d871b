"""The daemon runtime: scheduling, health, metrics server, leadership, systemd."""
