"""Pieces both services share: the router-worker job contract, logging, settings loading,
request helpers and the draining server. A leaf: it imports neither service nor torch."""
