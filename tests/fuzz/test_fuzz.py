"""A bounded fuzz run in the normal suite: every operation, a few derandomized examples each.

The full run is `make fuzz` (python -m tests.fuzz): more examples, the same checks.
"""
from __future__ import annotations

import pytest
import requests
import schemathesis
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


def _answer(status: int, body: bytes, url: str = "http://127.0.0.1:9/pools/p") -> schemathesis.Response:
    return schemathesis.Response(status_code=status, headers={"Content-Type": ["application/json;odata=minimalmetadata"]},
                                 content=body, request=requests.Request("GET", url).prepare(), elapsed=0.0,
                                 message="", encoding="utf-8", http_version="1.1", verify=True)


@pytest.mark.parametrize("status, body, kind", [
    (500, b'{"code":"InternalError","message":{"lang":"en-US","value":"boom"}}', "server error"),
    (404, b'{"code":"PoolNotFound","message":"a plain string breaks the SDK"}', "schema violation"),
    (200, b'{"id":"p","state":"floating"}', "schema violation"),
    (201, b"", "schema violation"),
])
def test_the_checks_catch_what_they_are_for(status, body, kind):
    """The judge itself, on answers localbatch must never give (so they are made here, not asked for)."""
    fuzzer = Fuzzer("http://127.0.0.1:9")
    case = fuzzer.schema["/pools/{poolId}"]["GET"].Case(path_parameters={"poolId": "p"},
                                                        query={"api-version": "2025-06-01"})
    fuzzer.judge("get_pool", case, "GET /pools/p", _answer(status, body))
    assert [finding.kind for finding in fuzzer.report.findings][:1] == [kind]


def test_the_checks_pass_a_batch_error():
    fuzzer = Fuzzer("http://127.0.0.1:9")
    case = fuzzer.schema["/pools/{poolId}"]["GET"].Case(path_parameters={"poolId": "p"},
                                                        query={"api-version": "2025-06-01"})
    fuzzer.judge("get_pool", case, "GET /pools/p", _answer(
        404, b'{"code":"PoolNotFound","message":{"lang":"en-US","value":"The specified pool does not exist."}}'))
    assert fuzzer.report.findings == []
