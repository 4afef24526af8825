"""`python -m qwen_image_router`: the router alone, configured from the environment."""

from qwen_image_router.app import run

run()
