"""The stateless public router: validates OpenAI-style requests and sends jobs to workers."""
