"""What the schemathesis fuzz run (tests/fuzz, `make fuzz`) found, each pinned by a raw HTTP test."""
from __future__ import annotations

import pytest

from .support import pool_options, unique_id
from .test_auth_and_protocol import _assert_batch_error


@pytest.fixture(scope="module")
def empty_pool(client) -> str:
    pool = unique_id("fuzzfound")
    client.create_pool(pool_options(pool, nodes=0))
    return pool


@pytest.mark.parametrize("method, action", [("PATCH", ""), ("POST", "/updateproperties")])
def test_a_start_task_resource_file_without_a_source_is_refused_on_update(raw, client, empty_pool, method, action):
    """Found by the fuzz: only pool creation checked the start task, so an update stored a resource
    file without a source, and the next node's start task failed inside the emulator (KeyError)."""
    body = {"startTask": {"commandLine": "/bin/true", "resourceFiles": [{"filePath": "input.txt"}]}}
    if action:
        body.update(metadata=[], applicationPackageReferences=[])
    response = raw.request(method, f"/pools/{empty_pool}{action}", body=body)
    _assert_batch_error(response, 400, "InvalidPropertyValue")
    assert response.detail("PropertyName") == "startTask.resourceFiles[0]"
    assert client.get_pool(empty_pool).start_task is None
