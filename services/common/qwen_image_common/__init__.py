"""Pieces both services share: the router-worker job contract, logging, the `qwen-image` CLI."""
