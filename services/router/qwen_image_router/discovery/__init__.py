"""Where the worker set comes from: a static list, or the Kubernetes API."""
