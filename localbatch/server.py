"""LocalBatchServer: the emulator as an object with start(), url and stop().

It runs its own event loop in a background thread, so tests and tools can embed it;
`python -m localbatch` runs the same server in the foreground.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from typing import Callable, Iterator, Optional

from aiohttp import web

from .accounts import WELL_KNOWN_ACCOUNT_NAME, load_accounts
from .http import MAX_BODY_BYTES, Pipeline
from .domain.runtime import Timings
from .domain.quotas import Quotas
from .domain.service import BatchService
from .node.network import NodeNetwork, node_subnet_from_environment
from .node.resourcefiles import AutoStorage
from .routes import build_router

logger = logging.getLogger(__name__)
AUTO_STORAGE_ENV_VAR = "LOCALBATCH_AUTOSTORAGE_CONNECTION_STRING"


class LocalBatchServer:
    def __init__(self, location: str, host: str = "127.0.0.1", port: int = 0, debug: bool = False,
                 timings: Optional[Timings] = None, auto_storage_connection_string: Optional[str] = None,
                 quotas: Optional[Quotas] = None, node_subnet: Optional[str] = None):
        self.location = os.path.abspath(location)
        self.host = host
        self.port = port
        self.debug = debug
        self.timings = timings or Timings()
        self.quotas = quotas or Quotas()
        connection_string = auto_storage_connection_string or os.environ.get(AUTO_STORAGE_ENV_VAR)
        self.auto_storage = AutoStorage(connection_string) if connection_string else AutoStorage()
        # Each node's address, and the public address of NAT frontends (.1); see node/network.py.
        self.network = NodeNetwork(node_subnet or node_subnet_from_environment())
        self.accounts = load_accounts()
        self.account_name = WELL_KNOWN_ACCOUNT_NAME
        self.service: Optional[BatchService] = None
        self.pipeline: Optional[Pipeline] = None
        self._runner: Optional[web.AppRunner] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- inside a running loop -----------------------------------------------------------------
    async def start_async(self) -> None:
        self.service = BatchService(self.location, self.account_name, self.timings, self.auto_storage, self.quotas,
                                    self.network)
        self.service.load()
        await self.service.start_node_services()
        self.pipeline = Pipeline(self.service, build_router(), self.accounts, self.debug)
        app = web.Application(client_max_size=MAX_BODY_BYTES * 8)
        # Every path, newlines included (an encoded one decodes to one), reaches the pipeline.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.pipeline.__call__)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
        self.service.base_url = self.url
        if self.service.context.services.ssh_unavailable:
            logger.warning("nodes have no SSH server: %s", self.service.context.services.ssh_unavailable)
        self.service.start_background_work()

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.service is not None:
            await self.service.close()
            self.service = None

    # ---- from other threads ------------------------------------------------------------------
    def start(self) -> "LocalBatchServer":
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self.start_async())
            except BaseException as exc:  # reported to the caller of start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop_async())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="localbatch", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop = self._thread = None

    @contextlib.contextmanager
    def holding(self, *steps: str) -> Iterator[None]:
        """For tests: hold these infrastructure steps (names of Timings fields, e.g. "pool_deleting")
        so the transitional state they leave an entity in lasts until the block ends."""
        self._on_loop(lambda: [self.service.transitions.hold(step) for step in steps])
        try:
            yield
        finally:
            self._on_loop(lambda: [self.service.transitions.release(step) for step in steps])

    def _on_loop(self, function: Callable[[], object]) -> None:
        if self._loop is None or self.service is None:
            raise RuntimeError("the server is not running")

        async def call() -> None:
            function()
        asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def __enter__(self) -> "LocalBatchServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
