"""The router's HTTP surface: routes, their dependencies and request-level middleware."""
