"""bpsync: keeps BigPanda incidents and ServiceNow incidents in sync, both ways."""

__version__ = "0.1.0"
