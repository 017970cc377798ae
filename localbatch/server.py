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

from .accounts import WELL_KNOWN_ACCOUNT_NAME, account_location, load_accounts
from .connections import ConnectionLimitedServer, ConnectionLimits
from .http import Pipeline
from .domain.runtime import Timings
from .domain.quotas import Quotas
from .domain.service import BatchService
from .node.resourcefiles import AutoStorage
from .routes import build_router

logger = logging.getLogger(__name__)
AUTO_STORAGE_ENV_VAR = "LOCALBATCH_AUTOSTORAGE_CONNECTION_STRING"


class LocalBatchServer:
    """localbatch: one world per account (see accounts.account_location), served on one port."""

    def __init__(self, location: str, host: str = "127.0.0.1", port: int = 0, debug: bool = False,
                 timings: Optional[Timings] = None, auto_storage_connection_string: Optional[str] = None,
                 quotas: Optional[Quotas] = None, limits: Optional[ConnectionLimits] = None):
        self.location = os.path.abspath(location)
        self.host = host
        self.port = port
        self.debug = debug
        self.timings = timings or Timings()
        self.quotas = quotas or Quotas()
        self.limits = limits or ConnectionLimits()
        connection_string = auto_storage_connection_string or os.environ.get(AUTO_STORAGE_ENV_VAR)
        self.auto_storage = AutoStorage(connection_string) if connection_string else AutoStorage()
        self.accounts = load_accounts()
        self.account_name = WELL_KNOWN_ACCOUNT_NAME
        self.services: dict[str, BatchService] = {}  # account name -> its world, while running
        self.pipeline: Optional[Pipeline] = None
        self.http_server: Optional[ConnectionLimitedServer] = None
        self._runner: Optional[web.ServerRunner] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def service(self) -> Optional[BatchService]:
        """The well-known account's world."""
        return self.services.get(self.account_name)

    def account_locations(self) -> dict[str, str]:
        """Account name -> the directory of its world."""
        return {name: account_location(self.location, name) for name in self.accounts}

    # ---- inside a running loop -----------------------------------------------------------------
    async def start_async(self) -> None:
        try:
            for name, location in self.account_locations().items():
                service = BatchService(location, name, self.timings, self.auto_storage, self.quotas)
                self.services[name] = service
                service.load()
            self.pipeline = Pipeline(self.services, build_router(), self.accounts, self.debug,
                                     body_seconds=self.limits.body_seconds,
                                     send_stall_seconds=self.limits.send_stall_seconds)
            # aiohttp's low-level server: every path, newlines included, reaches the pipeline.
            self.http_server = ConnectionLimitedServer(self.pipeline.__call__, self.limits, access_log=None)
            self._runner = web.ServerRunner(self.http_server, handle_signals=False,
                                            shutdown_timeout=self.limits.shutdown_seconds)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException:
            await self.stop_async()
            raise
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
        for service in self.services.values():
            service.base_url = self.url
            service.start_background_work()

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        services, self.services = list(self.services.values()), {}
        results = await asyncio.gather(*(service.close() for service in services), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

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
        """For tests: hold these infrastructure steps (names of Timings fields, e.g. "pool_deleting"),
        in every account, so the transitional state they leave an entity in lasts until the block ends."""
        self._on_loop(lambda: [service.transitions.hold(step) for service in self.services.values()
                               for step in steps])
        try:
            yield
        finally:
            self._on_loop(lambda: [service.transitions.release(step) for service in self.services.values()
                                   for step in steps])

    def _on_loop(self, function: Callable[[], object]) -> None:
        if self._loop is None or not self.services:
            raise RuntimeError("the server is not running")

        async def call() -> None:
            function()
        asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def __enter__(self) -> "LocalBatchServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
