"""`qwen-image up`: the whole stack on one machine, the services started as child processes."""
