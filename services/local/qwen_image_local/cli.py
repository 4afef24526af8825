"""The `qwen-image` command: `up` runs one router and N workers on this machine."""

from __future__ import annotations

import argparse
import logging
import os
import signal

from qwen_image_common.logs import configure_logging
from qwen_image_local.supervisor import Supervisor, describe, plan_stack, visible_gpu_count

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-image", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up", help="run one router and N workers on this machine (Ctrl-C stops them all)"
    )
    up.add_argument("--port", type=int, default=6002, help="router port (default 6002)")
    up.add_argument(
        "--workers",
        type=int,
        default=None,
        help="generator workers (default: NUM_GPUS_TO_USE, else one per visible GPU, less the "
        "editors' GPUs; without a GPU, 1 CPU worker)",
    )
    up.add_argument(
        "--edit-workers",
        type=int,
        default=None,
        help="editor workers beside them, served as Qwen-Image-Edit-2509 from EDIT_MODEL_PATH "
        "(unset: the demo editor). Default: without a GPU, 1 (of the demo editor, or of "
        "EDIT_MODEL_PATH); on GPUs, none unless EDIT_MODEL_PATH is set, and then the GPUs are "
        "split: half of them edit (the rest of them when --workers is given). 0: no editor",
    )
    up.add_argument(
        "--worker-base-port", type=int, default=6101, help="first worker port (default 6101)"
    )
    up.add_argument("--host", default="0.0.0.0", help="router address (default 0.0.0.0)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    configure_logging(service="up")
    specs = plan_stack(
        args.port,
        args.workers,
        args.worker_base_port,
        args.host,
        args.edit_workers,
        gpus=visible_gpu_count(),
        env=os.environ,
    )
    logger.info("%s", describe(specs))
    supervisor = Supervisor(specs)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    raise SystemExit(supervisor.run())
