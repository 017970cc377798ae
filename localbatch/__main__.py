"""python -m localbatch: run the emulator in the foreground, Azurite-style.

Start-up problems end it with one line on stderr and a non-zero exit code, never a traceback:

- exit 2: the accounts in LOCALBATCH_ACCOUNTS cannot be read; ``--cert``/``--key`` are not a usable
  certificate and key, or only one is given; ``--auth-modes`` names an unknown mode;
  ``--node-subnet`` is not a loopback network; ``--location`` cannot be used
  (it is read-only, full, not a directory, not ours to write...); the state database in it
  cannot be opened (e.g. it is corrupt);
- exit 1: it cannot listen on ``--host``:``--port`` (the port is taken, the address is not ours).
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import resource
import signal
import ssl
import sys

from .accounts import AccountConfigError
from .connections import ConnectionLimits
from .domain.runtime import Timings
from .domain.service import NODES_DIRECTORY, STATE_DIRECTORY
from .identity.certificates import server_ssl_context
from .node.network import DEFAULT_NODE_SUBNET, NODE_SUBNET_ENV_VAR, NodeSubnetError
from .server import LocalBatchServer
from .store import StateDatabaseError

LOCATION_SUBDIRECTORIES = (STATE_DIRECTORY, NODES_DIRECTORY)
_WRITE_CHECK_BYTES = 4096  # one page: enough to need a block even on a file system with delayed allocation
_LOCATION_PROBLEMS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "not a directory",  # os.makedirs(exist_ok=True) on a path that is a file
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}
# Problems of the whole file system: naming the one path that met it first would only distract.
_WHOLE_FILE_SYSTEM_PROBLEMS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO}


class StartupError(Exception):
    """localbatch cannot start; the message is the one line it prints, `exit_code` what it exits with."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def program_name(argv0: str) -> str:
    """The name usage lines give: `python -m localbatch` when started as a module, else the
    command's own name (the `localbatch` console script)."""
    name = os.path.basename(argv0)
    return "python -m localbatch" if name in ("__main__.py", "") else name


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program_name(sys.argv[0]),
                                     description="A local emulator of the Azure Batch data-plane REST API.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=10100, help="port to listen on; 0 picks a free one (default 10100)")
    parser.add_argument("--location", default=".localbatch", help="directory for state and node directories")
    parser.add_argument("--debug", action="store_true", help="log every request (never credentials or bodies)")
    parser.add_argument("--node-startup-seconds", type=float, default=None,
                        help="how long a new node takes from creating to idle (default 0.3)")
    defaults = ConnectionLimits()
    parser.add_argument("--max-connections", type=_at_least_one, default=defaults.max_connections,
                        help=f"connections open at once, all clients together (default {defaults.max_connections})")
    parser.add_argument("--max-connections-per-client", type=_at_least_one,
                        default=defaults.max_connections_per_client,
                        help=f"connections open at once from one client address "
                             f"(default {defaults.max_connections_per_client})")
    parser.add_argument("--idle-timeout", type=_positive_seconds, default=defaults.idle_seconds,
                        help="seconds a connection may stay without a complete request header, from its opening "
                             f"or its previous answer (default {defaults.idle_seconds:g})")
    parser.add_argument("--body-timeout", type=_positive_seconds, default=defaults.body_seconds,
                        help=f"seconds a request body may take to arrive (default {defaults.body_seconds:g})")
    parser.add_argument("--cert", help="PEM certificate (chain) to serve https with; needs --key")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument("--public-url", help="base of every URL it returns, e.g. https://batch.example:10100 "
                                             "(default: the scheme and host each client used)")
    parser.add_argument("--auth-modes", default="SharedKey,AAD",
                        help="allowed authentication modes, comma-separated: SharedKey, AAD (Entra ID); "
                             "default SharedKey,AAD")
    parser.add_argument("--services-port", type=int, default=None,
                        help="also serve Key Vault and the management plane (ARM) on this port, over https; "
                             "0 picks a free one (default: not served)")
    parser.add_argument("--services-cert", help="PEM certificate for --services-port (default: --cert)")
    parser.add_argument("--services-key", help="PEM private key of --services-cert (default: --key)")
    parser.add_argument("--node-ca-bundle", help="CA bundle the nodes' programs trust (SSL_CERT_FILE, "
                                                 "REQUESTS_CA_BUNDLE), e.g. public roots plus the local CA")
    parser.add_argument("--node-subnet", default=None,
                        help="loopback subnet of the nodes' addresses: nodes get .2, .3, ...; NAT frontends listen "
                             f"on .1 (default: ${NODE_SUBNET_ENV_VAR}, else {DEFAULT_NODE_SUBNET})")
    return parser.parse_args(argv)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def raise_descriptor_limit() -> None:
    """Raise the soft limit of open files to the hard one (at most 65536), as servers do, so the
    connection limits rather than the descriptor limit decide how many connections fit."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        pass  # keep the limit there is


def describe_location_problem(error: OSError, location: str) -> str:
    """What is wrong with ``location``, in a few words, from the OSError that using it raised."""
    problem = _LOCATION_PROBLEMS.get(error.errno) or (error.strerror or str(error)).lower()
    path = None if error.errno in _WHOLE_FILE_SYSTEM_PROBLEMS else error.filename
    if path is not None and error.errno in (errno.ENOTDIR, errno.EEXIST):
        path = _file_in_the_way(path)
    if path is None or os.path.abspath(path) == os.path.abspath(location):
        return problem
    return f"{problem} ({path})"


def _file_in_the_way(path: str) -> str:
    """The first of ``path`` and its parents that exists but is not a directory (``path`` if none is)."""
    candidate = path
    while True:
        if os.path.exists(candidate) and not os.path.isdir(candidate):
            return candidate
        parent = os.path.dirname(candidate)
        if parent == candidate:
            return path
        candidate = parent


def prepare_location(location: str, account_locations: list[str] | None = None) -> None:
    """Create ``location`` and the subdirectories of every account's world in it (by default only
    the well-known account's, at its top), and prove each can be written to.

    Creates and removes a small file in every subdirectory, since a read-only or full file
    system lets existing directories be opened but refuses the first write. Raises
    ``StartupError`` (exit code 2) naming the problem.
    """
    try:
        if os.path.exists(location) and not os.path.isdir(location):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), location)
        for account_directory in account_locations or [location]:
            for name in LOCATION_SUBDIRECTORIES:
                directory = os.path.join(account_directory, name)
                os.makedirs(directory, exist_ok=True)
                _check_writable(directory)
    except OSError as exc:
        raise StartupError(f"cannot use --location {location}: {describe_location_problem(exc, location)}", 2) from exc


def _check_writable(directory: str) -> None:
    probe = os.path.join(directory, f".localbatch-write-check-{os.getpid()}")
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * _WRITE_CHECK_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        exc.filename = None  # the problem is the directory's, not the name of our probe's
        raise
    finally:
        if os.path.lexists(probe):
            os.remove(probe)


def check_certificate(cert: str | None, key: str | None) -> None:
    """Raise ``StartupError`` (exit 2) unless ``cert`` and ``key`` are a usable pair (or both absent)."""
    if not cert:
        return
    try:
        server_ssl_context(cert, key)
    except ssl.SSLError as exc:
        raise StartupError(f"cannot serve https with --cert {cert} and --key {key}: {exc.reason or exc}", 2) from exc
    except OSError as exc:
        raise StartupError(f"cannot serve https: {exc.filename or cert}: {exc.strerror or exc}", 2) from exc


async def start(server: LocalBatchServer, location: str, host: str, port: int) -> None:
    """Open the state and bind; turn what can go wrong there into a ``StartupError``."""
    try:
        await server.start_async()
    except StateDatabaseError as exc:
        raise StartupError(f"{exc} (move it away to start with no state)", 2) from exc

    except OSError as exc:
        if exc.filename is not None:  # the file system, not the socket
            raise StartupError(f"cannot use --location {location}: {describe_location_problem(exc, location)}",
                               2) from exc
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1) from exc


async def serve(server: LocalBatchServer, location: str, host: str, port: int) -> None:
    await start(server, location, host, port)
    if server.services_url:
        print(f"localbatch services (Key Vault, management) listening on {server.services_url}", flush=True)
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
    limits = ConnectionLimits(max_connections=arguments.max_connections,
                              max_connections_per_client=arguments.max_connections_per_client,
                              idle_seconds=arguments.idle_timeout, body_seconds=arguments.body_timeout)
    raise_descriptor_limit()
    try:
        try:
            server = LocalBatchServer(
                arguments.location, arguments.host, arguments.port, arguments.debug, timings, limits=limits,
                cert=arguments.cert, key=arguments.key, public_url=arguments.public_url,
                allowed_authentication_modes=[mode.strip() for mode in arguments.auth_modes.split(",") if mode.strip()],
                services_port=arguments.services_port, services_cert=arguments.services_cert,
                services_key=arguments.services_key, node_ca_bundle=arguments.node_ca_bundle,
                node_subnet=arguments.node_subnet)
        except ValueError as exc:  # options that do not go together
            raise StartupError(str(exc), 2) from exc
        check_certificate(arguments.cert, arguments.key)
        if arguments.services_cert:
            check_certificate(arguments.services_cert, arguments.services_key)
        prepare_location(arguments.location, list(server.account_locations().values()))
        asyncio.run(serve(server, arguments.location, arguments.host, arguments.port))
    except (AccountConfigError, NodeSubnetError) as exc:
        print(f"localbatch: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"localbatch: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
