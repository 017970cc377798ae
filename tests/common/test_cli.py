"""common.cli: options, one-line errors, exit codes, and logs without secrets."""

from __future__ import annotations

import io
import logging
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest

from common.cli import (
    EXIT_CONFIGURATION_ERROR,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_SUCCESS,
    RedactingFormatter,
    StepFailed,
    parse_sample_arguments,
    run_sample_main,
    step,
)
from common.cleanup import CleanupReport, CreatedResources
from common.config import ConfigError
from common.local import LocalStackError


@pytest.fixture(autouse=True)
def restore_sigterm_handler() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_default_options() -> None:
    arguments = parse_sample_arguments("doc", Path("/x/sample_configs/s.cfg"), [])

    assert arguments.config is None
    assert arguments.sample_config == Path("/x/sample_configs/s.cfg")
    assert arguments.keep_resources is False and arguments.verbose is False


def test_all_options() -> None:
    arguments = parse_sample_arguments(
        "doc", Path("s.cfg"), ["--config", "azure.cfg", "--sample-config", "mine.cfg", "--keep-resources", "-v"])

    assert (arguments.config, arguments.sample_config) == (Path("azure.cfg"), Path("mine.cfg"))
    assert arguments.keep_resources and arguments.verbose


def test_success_is_exit_code_0(capsys: pytest.CaptureFixture) -> None:
    assert run_sample_main("sample.py", lambda: None) == EXIT_SUCCESS
    assert capsys.readouterr().err == ""


def fail_with(error: BaseException):  # type: ignore[no-untyped-def]
    def run() -> None:
        raise error
    return run


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (ConfigError("/c.cfg: [Batch] account_key: the value is empty"), EXIT_CONFIGURATION_ERROR,
         "sample.py: error: configuration error: /c.cfg: [Batch] account_key: the value is empty"),
        (LocalStackError("Node.js is not installed"), EXIT_FAILURE, "sample.py: error: local stack: Node.js is not installed"),
        (TimeoutError("timed out after 0:30:00 waiting for x"), EXIT_FAILURE,
         "sample.py: error: TimeoutError: timed out after 0:30:00 waiting for x"),
        (RuntimeError("two\nlines with https://a/b?sig=c2VjcmV0"), EXIT_FAILURE,
         "sample.py: error: RuntimeError: two lines with https://a/b?sig=REDACTED"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "sample.py: error: interrupted"),
    ],
)
def test_a_failure_is_one_line_on_stderr_and_a_non_zero_exit_code(
    error: BaseException, code: int, line: str, capsys: pytest.CaptureFixture
) -> None:
    assert run_sample_main("sample.py", fail_with(error)) == code

    captured = capsys.readouterr()
    assert captured.err == line + "\n"
    assert captured.out == ""


def test_sigterm_is_handled_like_ctrl_c(capsys: pytest.CaptureFixture) -> None:
    cleaned_up = []

    def run() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt the sample")
        finally:
            cleaned_up.append(True)

    assert run_sample_main("sample.py", run) == EXIT_INTERRUPTED
    assert cleaned_up == [True]


def test_log_records_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(message)s"))
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    try:
        logger.warning("downloading %s", "https://a.blob.core.windows.net/c/b?sp=r&sig=c2VjcmV0")
    finally:
        logger.removeHandler(handler)

    assert stream.getvalue() == "downloading https://a.blob.core.windows.net/c/b?sp=r&sig=REDACTED\n"


def test_a_failed_step_is_named_in_the_error_line(capsys: pytest.CaptureFixture) -> None:
    def run() -> None:
        with step("create job j1"):
            raise TimeoutError("no answer")

    assert run_sample_main("sample.py", run, CreatedResources(["j1"])) == EXIT_FAILURE
    assert capsys.readouterr().err == "sample.py: error: create job j1: TimeoutError: no answer\n"


def test_ctrl_c_does_not_pass_through_a_step_as_a_failure() -> None:
    with pytest.raises(KeyboardInterrupt):
        with step("wait for the task"):
            raise KeyboardInterrupt
    with pytest.raises(StepFailed, match="^outer: ValueError: inner$"):
        with step("outer"), step("ignored"):
            raise StepFailed("outer", ValueError("inner"))


def run_that_left(report: CleanupReport, error: BaseException, resources: CreatedResources):  # type: ignore[no-untyped-def]
    def run() -> None:
        resources.cleanup_report = report
        raise error
    return run


@pytest.mark.parametrize(
    ("report", "error", "line"),
    [
        (CleanupReport(deleted=["job j1", "pool p1"]), KeyboardInterrupt(),
         "sample.py: error: interrupted; everything it created was deleted"),
        (CleanupReport(deleted=["pool p1"], failed=["job j1: ServiceRequestError: connection refused"]), KeyboardInterrupt(),
         "sample.py: error: interrupted; could not delete job j1: ServiceRequestError: connection refused"),
        (CleanupReport(kept=["job j1"], not_reached=["container c1"], interrupted=True), KeyboardInterrupt(),
         "sample.py: error: interrupted; cleanup was stopped before deleting container c1; kept job j1"),
        (CleanupReport(still_deleting=["pool p1"]), KeyboardInterrupt(),
         "sample.py: error: interrupted; deletion requested but not yet finished for pool p1"),
        (CleanupReport(kept=["pool p1"]), StepFailed("wait for the task", TimeoutError("late")),
         "sample.py: error: wait for the task: TimeoutError: late; kept pool p1"),
        (CleanupReport(deleted=["pool p1"]), StepFailed("wait for the task", TimeoutError("late")),
         "sample.py: error: wait for the task: TimeoutError: late"),
    ],
)
def test_the_last_line_says_what_is_still_there(
    report: CleanupReport, error: BaseException, line: str, capsys: pytest.CaptureFixture
) -> None:
    resources = CreatedResources(["j1"], ["p1"], ["c1"])

    run_sample_main("sample.py", run_that_left(report, error, resources), resources)

    assert capsys.readouterr().err == line + "\n"


def test_ctrl_c_before_cleanup_ran_lists_what_may_be_left(capsys: pytest.CaptureFixture) -> None:
    resources = CreatedResources(["j1"])

    assert run_sample_main("sample.py", fail_with(KeyboardInterrupt()), resources) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "sample.py: error: interrupted; cleanup did not run; may be left: job j1\n"


def test_what_is_left_is_followed_by_how_to_look_at_it_and_delete_it() -> None:
    from common.cli import how_to_inspect_and_delete
    from common.config import environment_variable_name, load_settings, sample_configuration_path

    local = load_settings(None, sample_configuration_path("sample1_helloworld.py"), environ={})
    azure = load_settings(None, sample_configuration_path("sample1_helloworld.py"), environ={
        environment_variable_name("Local", "start_local_stack"): "false",
        environment_variable_name("Batch", "endpoint"): "https://mybatch.westeurope.batch.azure.com",
        environment_variable_name("Batch", "account_name"): "mybatch",
    })
    report = CleanupReport(kept=["job j1"], failed=["pool p1: ServiceRequestError: refused"], not_reached=["container c1"])

    local_lines = how_to_inspect_and_delete(local, report)
    azure_lines = how_to_inspect_and_delete(azure, report)

    assert local_lines[0].startswith("To look at them: 'make stack' in ")
    assert azure_lines[0] == "To look at them: the Azure portal (Batch account mybatch), or 'az batch job list' / 'az batch pool list'"
    for lines in (local_lines, azure_lines):
        assert lines[1].endswith(" -m common.delete_resources --job j1 --pool p1 --container c1")
    assert how_to_inspect_and_delete(local, CleanupReport(deleted=["job j1"])) == []
