"""Everything the router sends to workers: the connection pools (transport), one job to one
worker (client), a job to the best worker that takes it (dispatch), and one request's
images spread over several idle workers (spread)."""
