"""python -m localbatch: run the emulator in the foreground, Azurite-style."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .accounts import AccountConfigError
from .server import LocalBatchServer
from .domain.runtime import Timings


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m localbatch",
                                     description="A local emulator of the Azure Batch data-plane REST API.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=10100, help="port to listen on; 0 picks a free one (default 10100)")
    parser.add_argument("--location", default=".localbatch", help="directory for state and node directories")
    parser.add_argument("--debug", action="store_true", help="log every request (never credentials or bodies)")
    parser.add_argument("--node-startup-seconds", type=float, default=None,
                        help="how long a new node takes from creating to idle (default 0.3)")
    return parser.parse_args(argv)


async def serve(server: LocalBatchServer) -> None:
    await server.start_async()
    print(f"localbatch listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop_async()


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if arguments.debug else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    timings = Timings()
    if arguments.node_startup_seconds is not None:
        timings.node_creating = arguments.node_startup_seconds / 3
        timings.node_starting = arguments.node_startup_seconds * 2 / 3
    try:
        server = LocalBatchServer(arguments.location, arguments.host, arguments.port, arguments.debug, timings)
        asyncio.run(serve(server))
    except AccountConfigError as exc:
        print(f"localbatch: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"localbatch: cannot listen on {arguments.host}:{arguments.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
