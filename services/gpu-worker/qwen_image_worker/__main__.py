"""`python -m qwen_image_worker`: one worker, configured from the environment."""

from qwen_image_worker.app import run

run()
