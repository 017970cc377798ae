"""LocalBatchServer: the emulator as an object with start(), url and stop().

It runs its own event loop in a background thread, so tests and tools can embed it;
`python -m localbatch` runs the same server in the foreground.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from typing import Callable, Iterable, Iterator, Optional

from aiohttp import web

from .accounts import WELL_KNOWN_ACCOUNT_NAME, account_location, load_accounts
from .auth import AUTHENTICATION_MODES, Authenticator
from .connections import ConnectionLimitedServer, ConnectionLimits
from .http import Pipeline
from .https_site import HttpsSite
from .identity.certificates import server_ssl_context
from .identity.endpoint import IdentityEndpoint, load_identity_header
from .identity.tokens import TokenIssuer
from .arm.identities import UNPRIVILEGED_IDENTITY
from .node.managed_identity import IdentityNotFound, NodeIdentityEndpoint
from .node.storage_identity import NodeStorageCredential, StorageIdentityError, ssl_option
from .services import AzureServices
from .domain.runtime import Timings
from .domain.quotas import Quotas
from .domain.service import BatchService
from .node.network import NodeNetwork, node_subnet_from_environment
from .node.resourcefiles import AutoStorage
from .routes import build_router

logger = logging.getLogger(__name__)
AUTO_STORAGE_ENV_VAR = "LOCALBATCH_AUTOSTORAGE_CONNECTION_STRING"
IDENTITY_DIRECTORY = "identity"  # under --location: the token issuer's signing key and endpoint secret
KEY_VAULT_DIRECTORY = "keyvault"  # under --location: the local vault's keys and secrets


class LocalBatchServer:
    """localbatch: one world per account (see accounts.account_location), served on one port."""

    def __init__(self, location: str, host: str = "127.0.0.1", port: int = 0, debug: bool = False,
                 timings: Optional[Timings] = None, auto_storage_connection_string: Optional[str] = None,
                 quotas: Optional[Quotas] = None, limits: Optional[ConnectionLimits] = None,
                 cert: Optional[str] = None, key: Optional[str] = None, public_url: Optional[str] = None,
                 allowed_authentication_modes: Iterable[str] = AUTHENTICATION_MODES,
                 services_port: Optional[int] = None, services_cert: Optional[str] = None,
                 services_key: Optional[str] = None, node_ca_bundle: Optional[str] = None,
                 node_subnet: Optional[str] = None):
        """``cert`` and ``key`` (PEM files): serve https. ``public_url``: the base of every URL it
        returns (default: the scheme and host each client used). ``allowed_authentication_modes``:
        ``SharedKey`` and/or ``AAD`` (Entra ID bearer tokens), as an account's allowedAuthenticationModes.
        ``services_port``: also serve Key Vault and the management plane there, over https with
        ``services_cert``/``services_key`` (default: ``cert``/``key``). ``node_ca_bundle``: a CA bundle
        the nodes' programs trust (SSL_CERT_FILE, REQUESTS_CA_BUNDLE), instead of the one inherited.
        ``node_subnet``: the loopback subnet of the nodes' addresses (default $LOCALBATCH_NODE_SUBNET, else
        127.0.0.0/24), shared by every account's nodes."""
        if bool(cert) != bool(key):
            raise ValueError("--cert and --key go together: give both to serve https, or neither")
        self.services_port = services_port
        self.services_cert, self.services_key = services_cert or cert, services_key or key
        if services_port is not None and not (self.services_cert and self.services_key):
            raise ValueError("--services-port needs a certificate and key (--services-cert and --services-key, or "
                             "--cert and --key): Key Vault and management clients send tokens over https only")
        self.node_ca_bundle = os.path.abspath(node_ca_bundle) if node_ca_bundle else None
        self._node_ssl = ssl_option(self.node_ca_bundle)  # what the node agent trusts for Storage over https
        self.azure_services: Optional[AzureServices] = None  # Key Vault and ARM, while served
        self.node_identity: Optional[NodeIdentityEndpoint] = None
        self._services_runner: Optional[web.ServerRunner] = None
        self.location = os.path.abspath(location)
        self.host = host
        self.port = port
        self.cert, self.key = cert, key
        self.public_url = public_url.rstrip("/") if public_url else None
        self.allowed_authentication_modes = frozenset(allowed_authentication_modes)
        unknown = self.allowed_authentication_modes - set(AUTHENTICATION_MODES)
        if unknown or not self.allowed_authentication_modes:
            raise ValueError(f"authentication modes are {' and '.join(AUTHENTICATION_MODES)}; got "
                             f"{', '.join(sorted(unknown)) or 'none'}")
        self.identity: Optional[TokenIssuer] = None  # the token issuer, while running
        self.debug = debug
        self.timings = timings or Timings()
        self.quotas = quotas or Quotas()
        self.limits = limits or ConnectionLimits()
        connection_string = auto_storage_connection_string or os.environ.get(AUTO_STORAGE_ENV_VAR)
        self.auto_storage = AutoStorage(connection_string) if connection_string else AutoStorage()
        # Each node's address, and the public address of NAT frontends (.1); see node/network.py.
        self.network = NodeNetwork(node_subnet or node_subnet_from_environment())
        self.accounts = load_accounts()
        self.account_name = WELL_KNOWN_ACCOUNT_NAME
        self.services: dict[str, BatchService] = {}  # account name -> its world, while running
        self.pipeline: Optional[Pipeline] = None
        self.http_server: Optional[ConnectionLimitedServer] = None
        self._runner: Optional[web.ServerRunner] = None
        self._https_site: Optional[HttpsSite] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"

    @property
    def url(self) -> str:
        """Where it listens, e.g. ``https://127.0.0.1:10100``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

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
                service = BatchService(location, name, self.timings, self.auto_storage, self.quotas, self.network)
                self.services[name] = service
                service.load()
                # The CA bundle nodes trust is known now (the identity endpoint once it listens):
                # blob mounts made again before the first answer need it.
                service.context.node_environment = functools.partial(self._node_environment, name)
                await service.start_node_services()
            identity_directory = os.path.join(self.location, IDENTITY_DIRECTORY)
            self.identity = TokenIssuer.open(identity_directory)
            identity_endpoint = IdentityEndpoint(self.identity, load_identity_header(identity_directory))
            self.identity.register(UNPRIVILEGED_IDENTITY)
            self.node_identity = NodeIdentityEndpoint(self._find_pool, self.identity.issue, self.identity.find_identity)
            for name, service in self.services.items():
                service.context.node_environment = functools.partial(self._node_environment, name)
                service.context.node_storage = functools.partial(self._node_storage, name)
            authenticator = Authenticator(self.accounts, self.account_name, self.identity,
                                          self.allowed_authentication_modes)
            self.pipeline = Pipeline(self.services, build_router(), authenticator, self.debug,
                                     body_seconds=self.limits.body_seconds,
                                     send_stall_seconds=self.limits.send_stall_seconds, public_url=self.public_url)
            # aiohttp's low-level server: the token endpoints' few paths go to them, every other path
            # (newlines included) reaches the pipeline.
            handler = identity_endpoint.in_front_of(self.node_identity.in_front_of(self.pipeline.__call__))
            self.http_server = ConnectionLimitedServer(handler, self.limits, access_log=None)
            self._runner = web.ServerRunner(self.http_server, handle_signals=False,
                                            shutdown_timeout=self.limits.shutdown_seconds)
            await self._runner.setup()
            if self.cert and self.key:
                self._https_site = HttpsSite(self._runner, self.host, self.port,
                                             server_ssl_context(self.cert, self.key),
                                             max_waiting=self.limits.max_connections)
                await self._https_site.start()
                self.port = self._https_site.port
            else:
                site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
                await site.start()
                self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
            self.node_identity.base_url = self.public_url or self.url
            if self.services_port is not None:
                await self._start_azure_services()
        except BaseException:
            await self.stop_async()
            raise
        if self.service is not None and self.service.context.services.ssh_unavailable:
            logger.warning("nodes have no SSH server: %s", self.service.context.services.ssh_unavailable)
        for service in self.services.values():
            service.base_url = self.public_url or self.url  # the account URL tasks are told
            service.start_background_work()
        ssh_unavailable = next(iter(self.services.values())).context.services.ssh_unavailable
        if ssh_unavailable:
            logger.warning("nodes have no SSH server: %s", ssh_unavailable)

    async def _start_azure_services(self) -> None:
        """Key Vault and the management plane, on their own https port."""
        self.azure_services = AzureServices(self.services.get, self.identity,
                                            os.path.join(self.location, KEY_VAULT_DIRECTORY))
        self._services_runner = web.ServerRunner(web.Server(self.azure_services.__call__, access_log=None),
                                                 handle_signals=False)
        await self._services_runner.setup()
        site = web.TCPSite(self._services_runner, self.host, self.services_port, reuse_address=True,
                           ssl_context=server_ssl_context(self.services_cert, self.services_key))
        await site.start()
        self.services_port = site._server.sockets[0].getsockname()[1]

    @property
    def services_url(self) -> Optional[str]:
        """Where Key Vault and the management plane answer (None when not served)."""
        if self.azure_services is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.services_port}"

    def _find_pool(self, account: str, pool_id: str):
        service = self.services.get(account)
        return service.repo.find_pool(pool_id) if service is not None else None

    def _node_environment(self, account: str, pool_id: str, node_id: str) -> dict[str, str]:
        """What every node gives its programs: its managed identity endpoint (and, when told, the CAs to trust)."""
        environment = self.node_identity.environment(account, pool_id, node_id) if self.node_identity else {}
        if self.node_ca_bundle:
            environment.update({"SSL_CERT_FILE": self.node_ca_bundle, "REQUESTS_CA_BUNDLE": self.node_ca_bundle})
        return environment

    def _node_storage(self, account: str, pool_id: str, node_id: str) -> NodeStorageCredential:
        """How Batch reaches Storage on a node as one of its pool's identities (identityReference)."""
        def issue(resource: str, resource_id: str) -> str:
            if self.node_identity is None:
                raise StorageIdentityError("Identity not found: localbatch has no token issuer.")
            try:
                return self.node_identity.issue_for_node(account, pool_id, node_id, resource,
                                                         {"mi_res_id": resource_id}).access_token
            except IdentityNotFound as not_found:
                raise StorageIdentityError(f"{not_found.description}: {resource_id} is not an identity of "
                                           f"pool {pool_id}.") from None
        return NodeStorageCredential(issue, self._node_ssl)

    async def stop_async(self) -> None:
        if self._services_runner is not None:
            await self._services_runner.cleanup()
            self._services_runner = None
        if self.azure_services is not None:
            self.azure_services.close()
            self.azure_services = None
        if self._https_site is not None:
            await self._https_site.stop()
            self._https_site = None
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

    def advance_clock(self, seconds: float) -> None:
        """For tests: move every account's recurrence clock (job schedules, autoscale) forward, as if
        `seconds` had passed, so what became due happens now (see domain.runtime.Clock)."""
        self._on_loop(lambda: [service.clock.advance(seconds) for service in self.services.values()])

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
