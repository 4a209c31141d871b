"""Strict local emulators of the ServiceNow Table API and the BigPanda API (aiohttp.web)."""
