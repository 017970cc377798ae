"""Both samples from the command line: --help, and configuration errors as one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import environment_variable_name
from tests.samples.support import SAMPLE1, SAMPLE2, Backend, environment_without_overrides, run_sample

SAMPLES = [SAMPLE1, SAMPLE2]


@pytest.fixture
def offline_backend() -> Backend:
    """The shipped configuration with no stack behind it: configuration errors come before any request."""
    return Backend("offline", environment_without_overrides())


@pytest.mark.parametrize("sample", SAMPLES)
def test_help_lists_the_options(sample: str, offline_backend: Backend, tmp_path: Path) -> None:
    run = run_sample(sample, offline_backend, tmp_path, "--help")

    assert run.returncode == 0
    for option in ("--config PATH", "--sample-config PATH", "--keep-resources", "-v, --verbose"):
        assert option in run.stdout


@pytest.mark.parametrize("sample", SAMPLES)
def test_a_missing_configuration_file_is_one_line_and_exit_code_2(
    sample: str, offline_backend: Backend, tmp_path: Path
) -> None:
    run = run_sample(sample, offline_backend, tmp_path, "--config", "missing.cfg")

    assert run.returncode == 2, run.describe()
    assert run.stderr == f"{sample}: error: configuration error: {tmp_path / 'missing.cfg'}: configuration file not found\n"
    assert run.stdout == ""


@pytest.mark.parametrize(
    ("section", "key", "value", "reason"),
    [
        ("Batch", "account_key", "", "the value is empty"),
        ("Cleanup", "delete_job", "maybe", "expected true or false (or yes/no, on/off, 1/0), got 'maybe'"),
        ("Pool", "node_count", "0", "expected a whole number of at least 1, got '0'"),
        ("Batch", "account_key", "not base64!",
         "an account key is base64 text, as the portal shows it; this value (11 characters) is not valid base64"),
    ],
)
@pytest.mark.parametrize("sample", SAMPLES)
def test_a_bad_value_names_file_section_key_and_variable(
    sample: str, section: str, key: str, value: str, reason: str, offline_backend: Backend, tmp_path: Path
) -> None:
    variable = environment_variable_name(section, key)

    run = run_sample(sample, offline_backend, tmp_path, extra_environment={variable: value})

    assert run.returncode == 2, run.describe()
    [line] = run.stderr.splitlines()
    assert line.startswith(f"{sample}: error: configuration error: ")
    assert line.endswith(f".cfg: [{section}] {key} (from environment variable {variable}): {reason}")
