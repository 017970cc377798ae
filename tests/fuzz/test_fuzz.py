"""A bounded fuzz run in the normal suite: every operation, a few derandomized examples each.

The full run is `make fuzz` (python -m tests.fuzz): more examples, the same checks.
"""
from __future__ import annotations

import pytest
from schemathesis import GenerationMode

from localbatch import LocalBatchServer
from tests.emulator.conftest import fast_timings
from tests.fuzz.openapi import build_description, uncovered_routes
from tests.fuzz.run import Fuzzer, seed_world

EXAMPLES = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with LocalBatchServer(str(tmp_path_factory.mktemp("localbatch-fuzz")), timings=fast_timings()) as running:
        yield running


def test_the_description_covers_every_route_the_sdk_knows():
    description = build_description()
    operations = {entry["operationId"] for methods in description["paths"].values() for entry in methods.values()}
    assert len(operations) == 72
    assert {"create_pool", "get_task_file", "create_task_collection",
            "start_node"} <= operations
    assert uncovered_routes() == []


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda mode: mode.value)
def test_no_server_error_and_no_schema_violation(server, mode):
    fuzzer = Fuzzer(server.url)
    report = fuzzer.run(EXAMPLES, [mode], path_parameters=seed_world(server.url))
    print(report.summary())
    assert len(report.operations) == 72
    assert report.requests >= 72
    assert not report.server_errors, report.summary()
    assert not report.schema_violations, report.summary()
