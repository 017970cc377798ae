"""The command line, logging and exit codes that every sample shares.

``python sampleN_....py [--config PATH] [--sample-config PATH] [--keep-resources] [-v]``

A sample exits 0 on success. On failure it prints one line, ``<sample>: error: <reason>``, on
stderr and exits 1 (2 for a configuration problem, 130 after Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from common.config import ConfigError, redact_secrets
from common.helpers import describe_batch_error
from common.local import LocalStackError

logger = logging.getLogger(__name__)

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_CONFIGURATION_ERROR = 2
EXIT_INTERRUPTED = 130


def parse_sample_arguments(
    description: str, default_sample_configuration: Path, argv: Optional[Sequence[str]] = None
) -> argparse.Namespace:
    """Parse the options every sample accepts."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", type=Path, default=None, metavar="PATH",
        help="shared configuration with the Batch and Storage accounts (default: configuration.cfg next to the samples)",
    )
    parser.add_argument(
        "--sample-config", type=Path, default=default_sample_configuration, metavar="PATH",
        help=f"this sample's own configuration (default: sample_configs/{default_sample_configuration.name})",
    )
    parser.add_argument(
        "--keep-resources", action="store_true",
        help="keep every job, pool and container the sample creates, whatever its configuration says",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the sample does, step by step")
    return parser.parse_args(argv)


class RedactingFormatter(logging.Formatter):
    """A log formatter that scrubs account keys and SAS signatures from every record."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))


def configure_logging(verbose: bool) -> None:
    """Log warnings (or, with ``verbose``, every step of the samples) to stderr, with secrets redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    level = logging.DEBUG if verbose else logging.WARNING
    for name in ("common", "__main__"):
        logging.getLogger(name).setLevel(level)
    # The SDKs log every HTTP request at INFO; keep them quiet unless something goes wrong.
    logging.getLogger("azure").setLevel(logging.WARNING)
    # azure-batch logs a traceback at WARNING whenever a streamed download (a task file) answers
    # with an error, before raising the error itself; the error is what matters.
    logging.getLogger("azure.batch._utils.model_base").setLevel(logging.ERROR)


def _interrupt_on_sigterm(_signal_number: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_sample_main(program_name: str, run: Callable[[], None]) -> int:
    """Run a sample's body and turn the outcome into an exit code and at most one error line.

    SIGTERM is handled like Ctrl-C, so the sample's ``finally`` cleanup runs for both.
    """
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        run()
    except KeyboardInterrupt:
        _print_error(program_name, "interrupted; the resources it created were cleaned up as configured")
        return EXIT_INTERRUPTED
    except ConfigError as error:
        _print_error(program_name, f"configuration error: {error}")
        return EXIT_CONFIGURATION_ERROR
    except LocalStackError as error:
        _print_error(program_name, f"local stack: {error}")
        return EXIT_FAILURE
    except Exception as error:  # the one place that turns any failure into an exit code
        logger.debug("Traceback of the failure", exc_info=True)
        _print_error(program_name, describe_batch_error(error))
        return EXIT_FAILURE
    return EXIT_SUCCESS


def _print_error(program_name: str, reason: str) -> None:
    one_line = " ".join(redact_secrets(reason).split())
    print(f"{program_name}: error: {one_line}", file=sys.stderr, flush=True)
