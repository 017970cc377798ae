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


@pytest.mark.parametrize("name", ["a\u0001b", "a\nb", "../root", "-rf", "x" * 65])
def test_a_node_user_name_that_cannot_be_an_account_is_refused(raw, client, pool_id, name):
    """Found by the fuzz: any name was accepted (201), and one with a control character then broke
    off the answer unsent (its DataServiceId header cannot carry it)."""
    [node] = list(client.list_nodes(pool_id))[:1]
    response = raw.request("POST", f"/pools/{pool_id}/nodes/{node.id}/users", body={"name": name})
    _assert_batch_error(response, 400, "InvalidPropertyValue")
    assert response.detail("PropertyName") == "name"


@pytest.mark.parametrize("value", ["%C2%B2", "%D9%A3", "%EF%BC%91"])   # superscript two, Arabic-Indic three, fullwidth one
def test_a_timeout_in_digits_other_than_ascii_is_refused(raw, value):
    """Found by the fuzz: str.isdigit() accepts these, int() does not, and the request got a 500."""
    response = raw.request("GET", f"/pools?timeOut={value}")
    _assert_batch_error(response, 400, "InvalidQueryParameterValue")
    assert response.detail("QueryParameterName") == "timeOut"
