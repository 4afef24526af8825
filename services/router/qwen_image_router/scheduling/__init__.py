"""Choosing a worker for a job, as small parts: filters, a scorer, a picker, a balancer."""
