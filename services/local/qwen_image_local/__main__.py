"""`python -m qwen_image_local up`, the same as the `qwen-image` command."""

from qwen_image_local.cli import main

main()
