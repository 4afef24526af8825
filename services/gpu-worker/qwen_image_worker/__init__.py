"""The gpu-worker: one model copy on one GPU behind a small bounded job API."""
