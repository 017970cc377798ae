"""A node's SSH server: asyncssh listening on the node's address, port 22, as sshd on a real node.

- Users are the node users created through the API, read at each login: public key or password
  (checked against the stored hash), refused once expired or deleted.
- exec and shell sessions run `/bin/bash` in the user's home directory on the node, with the
  node's environment (AZ_BATCH_* and whatever the node runtime adds; see NodeAgent) and a `sudo`
  that lets admin users run commands (passwordless, as Batch's admin node users) and refuses
  the others. With a terminal requested, the session gets a pseudo-terminal.
- direct-tcpip (`ssh -L`): `localhost` is the node itself (its address); other addresses of the
  node subnet are reachable as on a virtual network; anything else is refused. Connections leave
  from the node's address.

Nothing of a credential is logged: asyncssh's own logger is kept at WARNING.
"""
from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import fcntl
import logging
import os
import pty
import signal
import struct
import termios
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import asyncssh
from asyncssh.forward import SSHForwarder

from .. import wire
from .credentials import parse_public_key, password_matches
from .network import NodeNetwork

logger = logging.getLogger(__name__)
logging.getLogger("asyncssh").setLevel(logging.WARNING)

SSH_PORT = 22
SHELL = "/bin/bash"
SHIMS_DIR = Path(__file__).resolve().parent / "shims"
LOCALHOST_NAMES = ("localhost", "127.0.0.1", "::1", "ip6-localhost")
LOGIN_TIMEOUT_SECONDS = 60
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class NodeSshSettings:
    """What the SSH server of one node needs from the rest of the emulator."""
    address: str
    host_key: str                                        # OpenSSH private key text
    find_user: Callable[[str], Optional[dict]]           # name -> the node user's record, live
    environment: Callable[[], dict[str, str]]            # the node's environment for its programs
    home_dir: Callable[[str], str]                       # a user's home directory (created on demand)
    network: NodeNetwork


def user_may_log_in(user: Optional[dict]) -> bool:
    """A user exists and has not expired."""
    if user is None:
        return False
    expiry = user.get("expiryTime")
    try:
        return not expiry or wire.parse_iso(expiry) > dt.datetime.now(dt.timezone.utc)
    except ValueError:
        return False


class NodeSshServer:
    """One node's SSH server; `start()` binds it, `stop()` closes it and ends its sessions."""

    def __init__(self, settings: NodeSshSettings, port: int = SSH_PORT):
        self.settings = settings
        self.port = port
        self._acceptor: Optional[asyncssh.SSHAcceptor] = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._sessions: set[asyncio.subprocess.Process] = set()

    @property
    def host_key(self) -> asyncssh.SSHKey:
        return asyncssh.import_private_key(self.settings.host_key)

    async def start(self) -> None:
        self._acceptor = await asyncssh.create_server(
            lambda: _NodeSshConnection(self), self.settings.address, self.port,
            server_host_keys=[self.host_key], process_factory=self._run_session, encoding=None,
            login_timeout=LOGIN_TIMEOUT_SECONDS, allow_scp=False, agent_forwarding=False, x11_forwarding=False,
            reuse_address=True)

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for process in list(self._sessions):
            _kill_group(process)
        for connection in list(self._connections):
            connection.close()
        await asyncio.gather(*(process.wait() for process in list(self._sessions)), return_exceptions=True)

    # ---- sessions ----------------------------------------------------------------------------
    def session_environment(self, username: str, is_admin: bool, connection: asyncssh.SSHServerConnection,
                            home: str, terminal: Optional[str]) -> dict[str, str]:
        env = dict(self.settings.environment())
        shims = SHIMS_DIR / ("admin" if is_admin else "user")
        client_host, client_port = connection.get_extra_info("peername")[:2]
        env.update({
            "PATH": f"{shims}:{env.get('PATH', '')}", "HOME": home, "USER": username, "LOGNAME": username,
            "SHELL": SHELL, "SSH_CONNECTION": f"{client_host} {client_port} {self.settings.address} {self.port}",
            "SSH_CLIENT": f"{client_host} {client_port} {self.port}",
        })
        if terminal:
            env["TERM"] = terminal
        return env

    async def _run_session(self, process: asyncssh.SSHServerProcess) -> None:
        connection = process.channel.get_connection()
        username = connection.get_extra_info("username")
        user = self.settings.find_user(username)
        if not user_may_log_in(user):  # deleted or expired since the login
            process.exit(1)
            return
        home = await asyncio.get_running_loop().run_in_executor(None, self.settings.home_dir, username)
        terminal = process.get_terminal_type()
        env = self.session_environment(username, bool(user.get("isAdmin")), connection, home, terminal)
        env.update({name: value for name, value in (process.env or {}).items() if name in ("LANG", "LC_ALL")})
        argv = [SHELL, "-c", process.command] if process.command is not None else [SHELL, "-l"]
        if terminal:
            exit_status = await self._run_on_terminal(process, argv, env, home)
        else:
            exit_status = await self._run_on_pipes(process, argv, env, home)
        process.exit(exit_status)

    async def _run_on_pipes(self, process: asyncssh.SSHServerProcess, argv: list[str], env: dict[str, str],
                            home: str) -> int:
        child = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=home, env=env, start_new_session=True, preexec_fn=_die_with_the_emulator)
        self._sessions.add(child)
        feeding = asyncio.ensure_future(_feed(process.stdin, child.stdin))
        try:
            await asyncio.gather(_pump(child.stdout, process.stdout), _pump(child.stderr, process.stderr))
            code = await child.wait()
        finally:
            feeding.cancel()
            _kill_group(child)
            self._sessions.discard(child)
        return code if code >= 0 else 128 - code

    async def _run_on_terminal(self, process: asyncssh.SSHServerProcess, argv: list[str], env: dict[str, str],
                               home: str) -> int:
        primary, secondary = pty.openpty()
        width, height, pixel_width, pixel_height = process.get_terminal_size()
        if width and height:
            fcntl.ioctl(primary, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixel_width, pixel_height))
        try:
            child = await asyncio.create_subprocess_exec(
                *argv, stdin=secondary, stdout=secondary, stderr=secondary, cwd=home, env=env,
                start_new_session=True, preexec_fn=_take_controlling_terminal)
        finally:
            os.close(secondary)
        self._sessions.add(child)
        loop = asyncio.get_running_loop()
        output_done = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(primary, _CHUNK)
            except OSError:  # EIO: the terminal's last user is gone
                data = b""
            if data:
                process.stdout.write(data)
            else:
                loop.remove_reader(primary)
                if not output_done.done():
                    output_done.set_result(None)

        async def feed_terminal() -> None:
            while data := await process.stdin.read(_CHUNK):
                await loop.run_in_executor(None, os.write, primary, data)
        loop.add_reader(primary, readable)
        feeding = asyncio.ensure_future(feed_terminal())
        try:
            code = await child.wait()
            await output_done
        finally:
            feeding.cancel()
            loop.remove_reader(primary)
            os.close(primary)
            _kill_group(child)
            self._sessions.discard(child)
        return code if code >= 0 else 128 - code

    # ---- direct-tcpip ------------------------------------------------------------------------------
    def forward_destination(self, host: str) -> Optional[str]:
        """Where a direct-tcpip request for `host` goes: the node itself for localhost, another
        node's address as asked; None (refused) for anything outside the node network."""
        if host.lower() in LOCALHOST_NAMES:
            return self.settings.address
        if self.settings.network.contains(host):
            return host
        return None

    async def open_forward(self, host: str, port: int) -> SSHForwarder:
        try:
            _, peer = await asyncio.get_running_loop().create_connection(
                SSHForwarder, host, port, local_addr=(self.settings.address, 0))
        except OSError as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, exc.strerror or str(exc)) from None
        return SSHForwarder(peer)


class _NodeSshConnection(asyncssh.SSHServer):
    """Authentication and port forwarding for one client connection."""

    def __init__(self, server: NodeSshServer):
        self.server = server
        self.connection: Optional[asyncssh.SSHServerConnection] = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.connection = conn
        self.server._connections.add(conn)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.connection is not None:
            self.server._connections.discard(self.connection)

    def begin_auth(self, username: str) -> bool:
        return True  # every user authenticates; an unknown one simply never succeeds

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        user = self.server.settings.find_user(username)
        if not user_may_log_in(user):
            return False
        allowed = parse_public_key(user.get("sshPublicKey"))
        return allowed is not None and allowed.public_data == key.public_data

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        user = self.server.settings.find_user(username)
        return user_may_log_in(user) and password_matches(password, user.get("passwordHash"))

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        destination = self.server.forward_destination(dest_host)
        if destination is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            f"{dest_host} is outside the node network")
        return self.server.open_forward(destination, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # remote forwarding (ssh -R) is not offered


async def _pump(reader: asyncio.StreamReader, writer) -> None:
    """Copy a child's output to the SSH channel until it ends."""
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()


async def _feed(reader, writer: asyncio.StreamWriter) -> None:
    """Copy the SSH channel's input to a child; end its input when the client does."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        return
    writer.close()


_PR_SET_PDEATHSIG = 1


def _die_with_the_emulator() -> None:
    """In the session's shell, before exec: killed if the emulator dies (a SIGKILL leaves no time
    to end sessions; a normal stop ends their whole process groups)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _take_controlling_terminal() -> None:
    _die_with_the_emulator()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
