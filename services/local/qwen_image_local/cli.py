"""The `qwen-image` command: `up` runs one router and N workers on this machine."""

from __future__ import annotations

import argparse
import signal

from qwen_image_common.logs import configure_logging
from qwen_image_local.supervisor import Supervisor, plan_stack


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
        help="worker count (default NUM_GPUS_TO_USE, else one per visible GPU, else 1 CPU worker)",
    )
    up.add_argument(
        "--edit-workers",
        type=int,
        default=0,
        help="workers of the editor beside them (EDIT_MODEL_PATH, default the demo editor; "
        "served as Qwen-Image-Edit-2509)",
    )
    up.add_argument(
        "--worker-base-port", type=int, default=6101, help="first worker port (default 6101)"
    )
    up.add_argument("--host", default="0.0.0.0", help="router address (default 0.0.0.0)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    configure_logging(service="up")
    supervisor = Supervisor(
        plan_stack(args.port, args.workers, args.worker_base_port, args.host, args.edit_workers)
    )
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    raise SystemExit(supervisor.run())
