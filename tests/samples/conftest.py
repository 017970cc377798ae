"""The ``backend`` fixture: every sample test runs locally, and against Azure when marked ``live``.

The live variant needs ``BATCHSAMPLES_LIVE_CONFIG``: the path of a configuration file (same
format as configuration.cfg) for a real Batch account and Storage account, with
``[Local] start_local_stack = false``. Without it the live variant is skipped, with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config import load_settings, sample_configuration_path
from tests.samples.support import SAMPLE1, Backend, environment_without_overrides

LIVE_CONFIG_VARIABLE = "BATCHSAMPLES_LIVE_CONFIG"


def live_backend() -> Backend:
    """The live backend, or a skip that says what is missing."""
    configured = os.environ.get(LIVE_CONFIG_VARIABLE, "")
    if not configured:
        pytest.skip(f"live tests need {LIVE_CONFIG_VARIABLE}=<configuration file for real Batch and Storage accounts>")
    path = Path(configured).resolve()
    environment = environment_without_overrides()
    settings = load_settings(path, sample_configuration_path(SAMPLE1), environ=environment)
    if settings.local.start_local_stack:
        pytest.fail(f"{LIVE_CONFIG_VARIABLE}={path} has [Local] start_local_stack = true; live tests need Azure")
    return Backend("live", environment, configuration_path=path, inventory_timeout_seconds=900.0)


@pytest.fixture(params=["local", pytest.param("live", marks=pytest.mark.live)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "live":
        return live_backend()
    return Backend("local", request.getfixturevalue("local_sample_environment"))


@pytest.fixture
def local_backend(local_sample_environment: dict[str, str]) -> Backend:
    """The local backend alone, for tests that need the emulator (fault injection, kept resources)."""
    return Backend("local", local_sample_environment)
