"""Delete jobs, pools and containers a sample kept (or could not delete), by id.

    python -m common.delete_resources [--config PATH] [--job ID ...] [--pool ID ...] [--container NAME ...]

The samples print this command, filled in, whenever they leave something behind. It uses the
accounts in ``configuration.cfg`` (and starts the local stack for the time it runs, when the
configuration points at it), deletes jobs first (a job's auto-pool goes with it), then pools,
then containers, and prints what it did. Exit code 0 when nothing it was given is left.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import Optional, Sequence

from common.cleanup import CreatedResources, clean_up_resources
from common.cli import configure_logging, run_sample_main
from common.clients import create_batch_client, create_blob_service_client
from common.config import load_account_settings
from common.local import local_stack_if_configured

PROGRAM = "python -m common.delete_resources"
WAIT_FOR_DELETION = timedelta(minutes=10)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Delete the resources named on the command line; return the exit code."""
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="shared configuration (default: configuration.cfg next to the samples)")
    parser.add_argument("--job", action="append", default=[], metavar="ID", help="a job to delete (with its auto-pool)")
    parser.add_argument("--pool", action="append", default=[], metavar="ID", help="a pool to delete")
    parser.add_argument("--container", action="append", default=[], metavar="NAME", help="a blob container to delete")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what it does")
    arguments = parser.parse_args(argv)
    configure_logging(arguments.verbose)
    if not (arguments.job or arguments.pool or arguments.container):
        parser.error("name at least one --job, --pool or --container")
    resources = CreatedResources(list(arguments.job), list(arguments.pool), list(arguments.container))

    def run() -> None:
        settings = load_account_settings(arguments.config)
        with local_stack_if_configured(settings), create_batch_client(settings.batch) as batch_client, \
                create_blob_service_client(settings.storage) as blob_service_client:
            report = clean_up_resources(
                batch_client, blob_service_client, resources, timeout=WAIT_FOR_DELETION,
                poll_interval_seconds=settings.batch.poll_interval_seconds,
            )
            for line in report.lines():
                print(line, flush=True)
        report.raise_if_incomplete()

    return run_sample_main(PROGRAM, run, resources)


if __name__ == "__main__":
    sys.exit(main())
