"""The `qwen-image` command: `up` (the whole local stack), `router`, `worker`."""

from __future__ import annotations

import argparse
import signal

from qwen_image_common.logs import configure_logging


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
        "--worker-base-port", type=int, default=6101, help="first worker port (default 6101)"
    )
    up.add_argument("--host", default="0.0.0.0", help="router address (default 0.0.0.0)")
    commands.add_parser("router", help="run the router alone (configured by environment)")
    commands.add_parser("worker", help="run one worker alone (configured by environment)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "router":
        from qwen_image_router.app import run as run_router

        run_router()
    elif args.command == "worker":
        from qwen_image_worker.app import run as run_worker

        run_worker()
    else:
        from qwen_image_common.stack import Supervisor, plan_stack

        configure_logging(service="up")
        supervisor = Supervisor(
            plan_stack(args.port, args.workers, args.worker_base_port, args.host)
        )
        signal.signal(signal.SIGINT, supervisor.request_stop)
        signal.signal(signal.SIGTERM, supervisor.request_stop)
        raise SystemExit(supervisor.run())


if __name__ == "__main__":
    main()
