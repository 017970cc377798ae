"""The command line, logging, steps and exit codes that every sample shares.

``python sampleN_....py [--config PATH] [--sample-config PATH] [--keep-resources] [-v]``

A sample exits 0 on success. On failure it prints one line, ``<sample>: error: <reason>``, on
stderr and exits 1 (2 for a configuration problem, 130 after Ctrl-C or SIGTERM). The reason
names the step that failed (``step("create the job")``) and, when anything the sample created
is still there (kept, not deleted, or not reached by an interrupted cleanup), lists it.

This is the samples' plumbing, not code to copy: it knows the configuration and the local stack.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from common import REPOSITORY_ROOT
from common.cleanup import CleanupReport, CreatedResources
from common.config import DEFAULT_CONFIGURATION_PATH as DEFAULT_CONFIGURATION
from common.config import ConfigError, SampleSettings, redact_secrets
from common.helpers import describe_batch_error
from common.local import LocalStackError

logger = logging.getLogger(__name__)

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_CONFIGURATION_ERROR = 2
EXIT_INTERRUPTED = 130
DELETABLE_KINDS = ("job", "pool", "container")
"""The kinds of resource ``python -m common.delete_resources`` deletes (``--job``, ``--pool``, ``--container``)."""


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


class StepFailed(Exception):
    """A step of a sample's story failed; the message names the step and the reason."""

    def __init__(self, step_name: str, error: BaseException) -> None:
        super().__init__(f"{step_name}: {describe_batch_error(error)}")
        self.step_name = step_name


@contextlib.contextmanager
def step(step_name: str) -> Iterator[None]:
    """Run one step of a sample's story; an error in it becomes ``StepFailed`` naming the step.

    ``KeyboardInterrupt`` (Ctrl-C) and ``StepFailed`` from an inner step pass through unchanged.
    """
    try:
        yield
    except StepFailed:
        raise
    except Exception as error:
        raise StepFailed(step_name, error) from error


def how_to_inspect_and_delete(settings: SampleSettings, report: CleanupReport) -> list[str]:
    """Printable lines saying how to look at what a run left behind, and how to delete it."""
    left = report.left_behind()
    if not left:
        return []
    # What common.delete_resources can delete; a sample that leaves anything else (sample 3's key) says how itself.
    deletable = [(kind, identifier) for kind, identifier in (name.split(" ", 1) for name in left)
                 if kind in DELETABLE_KINDS]
    arguments = " ".join(f"--{kind} {identifier}" for kind, identifier in deletable)
    config = "" if settings.configuration_path == DEFAULT_CONFIGURATION else f" --config {settings.configuration_path}"
    python = Path(sys.executable)
    if python.is_relative_to(REPOSITORY_ROOT):
        python = python.relative_to(REPOSITORY_ROOT)
    lines = []
    if settings.local.start_local_stack:
        command = f"'{python} -m common.stack{config}'" if config else "'make stack'"
        lines.append(f"To look at them: {command} in {REPOSITORY_ROOT} starts the local stack on the same data "
                     f"and keeps it running, with the endpoints and how to point a client at them")
    else:
        lines.append(f"To look at them: the Azure portal (Batch account {settings.batch.account_name or settings.batch.endpoint}), "
                     f"or 'az batch job list' / 'az batch pool list'")
    if deletable:
        lines.append(f"To delete them: cd {REPOSITORY_ROOT} && {python} -m common.delete_resources{config} {arguments}")
    return lines


def print_cleanup_report(settings: SampleSettings, report: CleanupReport) -> None:
    """Print what cleanup did with each resource and, if anything is left, how to inspect and delete it."""
    for line in report.lines() + how_to_inspect_and_delete(settings, report):
        print(line, flush=True)


def _interrupt_on_sigterm(_signal_number: int, _frame: object) -> None:
    raise KeyboardInterrupt


def what_is_left(resources: Optional[CreatedResources]) -> str:
    """One line on what the run left behind, from its cleanup report (or from what it created, if cleanup never ran)."""
    if resources is None:
        return ""
    if resources.cleanup_report is not None:
        return resources.cleanup_report.summary()
    names = resources.names()
    return f"cleanup did not run; may be left: {', '.join(names)}" if names else "it had created nothing yet"


def run_sample_main(program_name: str, run: Callable[[], None], resources: Optional[CreatedResources] = None) -> int:
    """Run a sample's body and turn the outcome into an exit code and at most one error line.

    SIGTERM is handled like Ctrl-C, so the sample's ``finally`` cleanup runs for both.
    ``resources`` is what the body records as it creates things; its cleanup report decides
    what the error line says is left.
    """
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        run()
    except KeyboardInterrupt:
        _print_error(program_name, f"interrupted; {what_is_left(resources)}" if resources else "interrupted")
        return EXIT_INTERRUPTED
    except StepFailed as error:
        logger.debug("Traceback of the failure", exc_info=True)
        report = resources.cleanup_report if resources else None
        _print_error(program_name, f"{error}; {report.summary()}" if report and report.left_behind() else str(error))
        return EXIT_FAILURE
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
