"""Run the local stack (localbatch + Azurite) in the foreground, on the data the samples left: ``make stack``.

    python -m common.stack [--config PATH]

It starts both emulators as ``configuration.cfg`` describes them (same ports, same data
directory, so every job, pool and container a sample kept is there), prints the endpoints, how to
point a client at them and what they hold, then runs until Ctrl-C or SIGTERM. An emulator that
already answers is used as it is and left running.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from common.cli import EXIT_CONFIGURATION_ERROR, EXIT_FAILURE, EXIT_SUCCESS, configure_logging
from common.clients import create_batch_client, create_blob_service_client
from common.config import AccountSettings, ConfigError, load_account_settings
from common.helpers import describe_batch_error
from common.local import LocalStack, LocalStackError

PROGRAM = "python -m common.stack"


def describe_contents(settings: AccountSettings) -> list[str]:
    """Lines listing the jobs, pools and containers the stack holds (what samples kept)."""
    try:
        with create_batch_client(settings.batch) as batch_client, \
                create_blob_service_client(settings.storage) as blob_service_client:
            jobs = [job.id for job in batch_client.list_jobs(select=["id"])]
            pools = [f"{pool.id} ({pool.current_dedicated_nodes or 0} node(s) of {pool.vm_size})"
                     for pool in batch_client.list_pools(select=["id", "vmSize", "currentDedicatedNodes"])]
            containers = [container.name for container in blob_service_client.list_containers()]
    except Exception as error:
        return [f"  (could not list what it holds: {describe_batch_error(error)})"]
    return [
        f"  jobs: {', '.join(jobs) or 'none'}",
        f"  pools: {', '.join(pools) or 'none'}",
        f"  containers: {', '.join(containers) or 'none'}",
    ]


def describe_stack(settings: AccountSettings, stack: LocalStack) -> list[str]:
    """The endpoints, where the data is, and how to point a client at the stack (never a key)."""
    configuration = settings.configuration_path
    return [
        f"localbatch: {stack.batch_endpoint} (Batch account {settings.batch.account_name!r}; "
        f"its key is [Batch] account_key in {configuration})",
        f"Azurite:    {stack.blob_endpoint} (Storage account {settings.storage.account_name!r}; "
        f"its key is [Storage] account_key in {configuration})",
        f"Data and logs: {stack.data_directory}",
        "Point a client at it:",
        f"  the samples and common.clients read {configuration.name}, which points here: run a sample in another "
        "terminal and it uses this stack (and leaves it running)",
        f"  your own code: BatchClient(endpoint={stack.batch_endpoint!r}, "
        f"credential=AzureNamedKeyCredential({settings.batch.account_name!r}, <account key>)) and "
        f"BlobServiceClient(account_url={stack.blob_endpoint!r}, credential={{'account_name': "
        f"{settings.storage.account_name!r}, 'account_key': <account key>}})",
    ] + _trust_lines(stack) + ["It holds:"]


def _trust_lines(stack: LocalStack) -> list[str]:
    """For an https stack: how a client trusts its development CA and gets Entra ID tokens from it."""
    if stack.trust_bundle is None:
        return []
    bundle = stack.trust_bundle
    lines = [f"  https: trust the stack's development CA with export REQUESTS_CA_BUNDLE={bundle} SSL_CERT_FILE={bundle}"]
    environment = stack.client_environment()
    if "IDENTITY_ENDPOINT" in environment:
        header_file = stack.data_directory / "localbatch" / "identity" / "identity-header"
        lines.append(f"  Entra ID (DefaultAzureCredential): export IDENTITY_ENDPOINT={environment['IDENTITY_ENDPOINT']} "
                     f"IDENTITY_HEADER=\"$(cat {header_file})\"")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Start the stack, print how to use it, and run until Ctrl-C or SIGTERM; return the exit code."""
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="shared configuration (default: configuration.cfg next to the samples)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what it does")
    arguments = parser.parse_args(argv)
    configure_logging(arguments.verbose)
    try:
        settings = load_account_settings(arguments.config)
    except ConfigError as error:
        print(f"{PROGRAM}: error: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIGURATION_ERROR
    if not settings.local.start_local_stack:
        print(f"{PROGRAM}: error: {settings.configuration_path} points at Azure ([Local] start_local_stack is "
              "false): there is no local stack to start", file=sys.stderr)
        return EXIT_CONFIGURATION_ERROR

    stopping = threading.Event()

    def stop(_signal_number: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stack = LocalStack(
        data_directory=settings.local.data_directory,
        batch_endpoint=settings.batch.endpoint,
        blob_endpoint=settings.storage.blob_endpoint,
        startup_timeout_seconds=settings.local.startup_timeout_seconds,
    )
    try:
        stack.start()
    except (LocalStackError, TimeoutError) as error:
        print(f"{PROGRAM}: error: local stack: {error}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        for line in describe_stack(settings, stack) + describe_contents(settings):
            print(line, flush=True)
        if not stack.started_process_names:
            print("Both emulators were already running; they stay up after this exits.", flush=True)
            return EXIT_SUCCESS
        print(f"Running ({', '.join(stack.started_process_names)} started here); Ctrl-C stops it.", flush=True)
        while not stopping.wait(timeout=1.0):
            pass
    finally:
        stack.stop()
    print("Stopped; the data stays for the next run.", flush=True)
    return EXIT_SUCCESS


if __name__ == "__main__":
    sys.exit(main())
