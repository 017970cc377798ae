"""What a booted node serves on the network: its SSH server on <node address>:22, and the
inbound NAT frontends of its pool that lead to it (<public address>:<frontend port> -> <node
address>:<backend port>), each enforcing its NAT pool's network security group rules.

They start when the node has booted and stop when it reboots or goes away (removal, pool
deletion, the emulator stopping): nothing is left listening.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass
from typing import Optional

from ..connections import reset_connection
from . import nsg
from .network import NodeNetwork
from .ssh import SSH_PORT, NodeSshServer, NodeSshSettings

logger = logging.getLogger(__name__)
_COPY_CHUNK = 64 * 1024


def ssh_unavailable_reason() -> Optional[str]:
    """Why node SSH servers cannot listen on port 22 here, or None when they can."""
    if os.geteuid() == 0:
        return None
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", encoding="ascii") as handle:
            if int(handle.read().strip()) <= SSH_PORT:
                return None
    except (OSError, ValueError):
        pass
    return ("node SSH servers listen on port 22 of each node's address, which needs root (or "
            "net.ipv4.ip_unprivileged_port_start <= 22); localbatch runs as uid %d" % os.geteuid())


@dataclass(frozen=True)
class Frontend:
    """One inbound NAT frontend of a node."""
    port: int
    backend_port: int
    rules: tuple[dict, ...]


class NatFrontend:
    """Listens on the public address and forwards allowed connections to the node."""

    def __init__(self, network: NodeNetwork, node_address: str, frontend: Frontend):
        self.network = network
        self.node_address = node_address
        self.frontend = frontend
        self._server: Optional[asyncio.AbstractServer] = None
        self._pipes: set[asyncio.Task] = set()
        self._open: set[asyncio.StreamWriter] = set()  # both ends of every forwarded connection

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.network.public_address, self.frontend.port,
                                                  reuse_address=True)

    async def stop(self) -> None:
        """Stop listening and cut every forwarded connection (their handlers then end on their own)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._pipes.add(task)
        self._open.add(writer)
        backend_writer: Optional[asyncio.StreamWriter] = None
        try:
            source_address, source_port = writer.get_extra_info("peername")[:2]
            if self._server is None or not nsg.allows(list(self.frontend.rules), self.network, source_address,
                                                      source_port):
                logger.info("NSG denied %s:%d -> frontend %d", source_address, source_port, self.frontend.port)
                reset_connection(writer.transport)
                return
            try:
                backend_reader, backend_writer = await self._connect_backend(source_address)
            except OSError:
                reset_connection(writer.transport)
                return
            self._open.add(backend_writer)
            await asyncio.gather(_copy(reader, backend_writer), _copy(backend_reader, writer))
        except asyncio.CancelledError:
            pass  # stop() cuts the connection; the handler ends quietly
        finally:
            for end in (writer, backend_writer):
                if end is not None:
                    end.close()
                    self._open.discard(end)
            self._pipes.discard(task)

    async def _connect_backend(self, source_address: str):
        """Connect to the node keeping the client's address as the source, as Azure's load balancer
        does (DNAT only): every loopback address is local, so it can be bound."""
        try:
            return await asyncio.open_connection(self.node_address, self.frontend.backend_port,
                                                 local_addr=(source_address, 0))
        except OSError:
            return await asyncio.open_connection(self.node_address, self.frontend.backend_port,
                                                 local_addr=(self.network.public_address, 0))


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_COPY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class NodeServices:
    """The running SSH servers and NAT frontends, by node key."""

    def __init__(self, network: NodeNetwork):
        self.network = network
        self.ssh_unavailable = ssh_unavailable_reason()
        self._running: dict[str, list] = {}

    async def start(self, key: str, ssh: NodeSshSettings, frontends: list[Frontend]) -> None:
        """Start the node's services (after stopping any it still has). A port that cannot be bound
        is logged and skipped: the node still works, only that way in is missing."""
        await self.stop(key)
        started: list = []
        self._running[key] = started
        if self.ssh_unavailable is None:
            await self._start_one(started, NodeSshServer(ssh), f"SSH on {ssh.address}:{SSH_PORT}")
        for frontend in frontends:
            await self._start_one(started, NatFrontend(self.network, ssh.address, frontend),
                                  f"NAT frontend {self.network.public_address}:{frontend.port}")

    async def _start_one(self, started: list, service, what: str) -> None:
        try:
            await service.start()
        except OSError as exc:
            hint = " (another localbatch uses this node subnet? see --node-subnet)" if exc.errno == errno.EADDRINUSE else ""
            logger.warning("cannot start %s: %s%s", what, exc.strerror or exc, hint)
            return
        if not any(running is started for running in self._running.values()):
            await service.stop()  # the node was stopped while this was starting
            return
        started.append(service)

    def ssh_server(self, key: str) -> Optional[NodeSshServer]:
        return next((s for s in self._running.get(key, ()) if isinstance(s, NodeSshServer)), None)

    async def stop(self, key: str) -> None:
        for service in self._running.pop(key, []):
            await service.stop()

    async def close(self) -> None:
        for key in list(self._running):
            await self.stop(key)
