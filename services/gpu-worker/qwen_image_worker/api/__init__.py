"""The worker's internal HTTP API (only the router calls it)."""
