"""Everything the router sends to workers: the connection pools (transport), one job to one
worker (client), and a job to the best worker that takes it (dispatch)."""
