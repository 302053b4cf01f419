"""The ``coup`` command (also ``python -m coup``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from coup.config import ConfigError, Settings

log = logging.getLogger("coup")


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed on Linux and macOS
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


async def _serve(settings: Settings) -> None:
    from coup.app import CoupNode

    node = CoupNode(settings)
    await node.start()
    log.info("coup serving on http://%s:%d/", settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("coup shutting down")
    await node.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.demo:
        overrides["demo"] = True
    settings = Settings.from_env(None, **overrides)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _run(_serve(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coup", description="CoUp Realtime: Socket.IO server for CoUp")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a node")
    serve.add_argument("--host", help="interface to listen on (default $HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default $PORT or 8000)")
    serve.add_argument("--demo", action="store_true", help="demo mode: embedded defaults and demo data")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"coup: configuration error: {exc}", file=sys.stderr)
        return 2
