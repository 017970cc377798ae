"""What the SDK never sends: bad signatures, unknown accounts and api-versions, malformed and
oversized bodies, wrong verbs; plus the response headers and error format every call relies on."""
from __future__ import annotations

import base64
import datetime as dt
import email.utils
import http.client
import json
import os
import re

import pytest
from azure.batch import models
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceModifiedError

from localbatch import LocalBatchServer

from .conftest import fast_timings
from .support import (API_VERSION, RawClient, batch_client, pool_options, shared_key_signature, ubuntu_configuration,
                      unique_id, wait_for)

OTHER_KEY = base64.b64encode(b"a different key, 32 bytes long!!").decode()


def _assert_batch_error(response, status: int, code: str) -> dict:
    assert response.status == status, response.body
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("request-id")
    body = response.json()
    assert body["code"] == code
    assert body["odata.metadata"].endswith("#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element")
    assert body["message"]["lang"] == "en-US"
    text = body["message"]["value"]
    assert re.search(r"\nRequestId:[0-9a-f-]{36}\nTime:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$", text), text
    assert response.headers["request-id"] in text
    return body


# ---- authentication -------------------------------------------------------------------------------
def test_the_independent_signer_is_accepted(raw):
    response = raw.request("GET", "/pools")
    assert response.status == 200
    assert response.json()["value"] is not None


def test_a_wrong_key_is_403_authentication_failed_without_the_signature(server):
    wrong = RawClient(server.url, key=OTHER_KEY)
    response = wrong.request("GET", "/pools")
    body = _assert_batch_error(response, 403, "AuthenticationFailed")
    assert "MAC signature" in response.detail("AuthenticationErrorDetail")
    # Re-sign to learn the signature that was sent; it must not come back in any form.
    signature = _sent_signature(wrong, "GET", "/pools")
    assert signature not in response.body.decode()
    assert OTHER_KEY not in response.body.decode()
    assert set(body) <= {"odata.metadata", "code", "message", "values"}


def _sent_signature(client: RawClient, method: str, path: str) -> str:
    captured: dict[str, str] = {}
    original = http.client.HTTPConnection.putheader

    def capture(self, header, *values):
        if header == "Authorization":
            captured["value"] = values[0]
        return original(self, header, *values)
    http.client.HTTPConnection.putheader = capture
    try:
        client.request(method, path)
    finally:
        http.client.HTTPConnection.putheader = original
    return captured["value"].rsplit(":", 1)[1]


def test_a_request_changed_after_signing_is_rejected(raw, server):
    # Sign a GET of /pools, then send it for /jobs.
    response = raw.request("GET", "/jobs", authorization="SharedKey localbatch:" + _sent_signature(raw, "GET", "/pools"))
    _assert_batch_error(response, 403, "AuthenticationFailed")


@pytest.mark.parametrize("authorization, reason_words", [
    (None, "missing"),
    ("SharedKey nocolonhere", "form"),
    ("Basic bG9jYWxiYXRjaDpwYXNz", "form"),
    ("SharedKey nobody:c2lnbmF0dXJl", "nobody"),
], ids=["missing", "no-colon", "basic", "unknown-account"])
def test_malformed_or_foreign_authorization_is_403(raw, authorization, reason_words):
    if authorization is None:
        response = raw.request("GET", "/pools", sign=False)
    else:
        response = raw.request("GET", "/pools", authorization=authorization)
    _assert_batch_error(response, 403, "AuthenticationFailed")
    assert reason_words in response.detail("AuthenticationErrorDetail").lower()
    assert b"c2lnbmF0dXJl" not in response.body and b"bG9jYWxiYXRjaDpwYXNz" not in response.body


def test_a_request_without_a_date_is_rejected(raw):
    client = RawClient(f"http://{raw.host}:{raw.port}")
    response = client.request("GET", "/pools", headers={"ocp-date": ""})
    _assert_batch_error(response, 403, "AuthenticationFailed")
    assert "date" in response.detail("AuthenticationErrorDetail").lower()


def test_the_sdk_with_a_wrong_key_gets_authentication_failed(server):
    with batch_client(server.url, key=OTHER_KEY) as wrong:
        with pytest.raises(HttpResponseError) as caught:
            list(wrong.list_pools())
    assert caught.value.status_code == 403
    assert caught.value.error.code == "AuthenticationFailed"


def test_accounts_from_the_environment_are_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALBATCH_ACCOUNTS", f"second:{OTHER_KEY}")
    with LocalBatchServer(str(tmp_path), timings=fast_timings()) as second:
        assert RawClient(second.url, account="second", key=OTHER_KEY).request("GET", "/pools").status == 200
        assert RawClient(second.url).request("GET", "/pools").status == 200  # the well-known one still works
        wrong = RawClient(second.url, account="second").request("GET", "/pools")  # well-known key, other account
        assert wrong.status == 403


def test_post_with_a_body_is_signed_over_its_length_and_type(raw):
    pool = unique_id("signed")
    body = {"id": pool, "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": ubuntu_configuration().as_dict()}
    response = raw.request("POST", "/pools", body=body)
    assert response.status == 201, response.body


# ---- api-version ------------------------------------------------------------------------------------
def test_unknown_api_version_is_a_clear_400(raw):
    response = raw.request("GET", "/pools", api_version="2019-01-01.9.0")
    body = _assert_batch_error(response, 400, "InvalidQueryParameterValue")
    details = {v["key"]: v["value"] for v in body["values"]}
    assert details["QueryParameterName"] == "api-version"
    assert details["QueryParameterValue"] == "2019-01-01.9.0"
    assert API_VERSION in details["Reason"]


def test_missing_api_version_is_400(raw):
    response = raw.request("GET", "/pools", api_version=None)
    _assert_batch_error(response, 400, "MissingRequiredQueryParameter")
    assert response.detail("QueryParameterName") == "api-version"


def test_a_timeout_query_parameter_is_accepted(raw):
    assert raw.request("GET", "/pools?timeOut=30").status == 200


# ---- bodies -------------------------------------------------------------------------------------------
def test_malformed_json_is_400_invalid_request_body(raw):
    response = raw.request("POST", "/pools", body=b'{"id": "p", "vmSize": ')
    _assert_batch_error(response, 400, "InvalidRequestBody")


def test_a_json_array_where_an_object_belongs_is_400(raw):
    response = raw.request("POST", "/pools", body=[1, 2, 3])
    _assert_batch_error(response, 400, "InvalidRequestBody")


def test_an_empty_body_is_400(raw):
    response = raw.request("POST", "/jobs", body=b"")
    _assert_batch_error(response, 400, "InvalidRequestBody")


@pytest.mark.parametrize("path, body, field", [
    ("/pools", {"id": "p1", "vmSize": "standard_d2s_v3", "bogusField": 1}, "bogusField"),
    ("/pools", {"id": "p2", "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": {
        "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts",
                           "colour": "blue"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}},
     "virtualMachineConfiguration.imageReference.colour"),
    ("/jobs", {"id": "j1", "poolInfo": {"poolId": "p"}, "priorityy": 5}, "priorityy"),
], ids=["top-level", "nested", "job"])
def test_unknown_fields_are_400_naming_the_field(raw, path, body, field):
    response = raw.request("POST", path, body=body)
    _assert_batch_error(response, 400, "InvalidRequestBody")
    assert f"'{field}'" in response.detail("Reason")


def test_a_missing_required_property_is_named(raw):
    response = raw.request("POST", "/jobs", body={"id": unique_id("job")})
    _assert_batch_error(response, 400, "MissingRequiredProperty")
    assert response.detail("PropertyName") == "poolInfo"


def test_a_property_of_the_wrong_type_is_named(raw):
    response = raw.request("POST", "/pools", body={
        "id": unique_id("pool"), "vmSize": "standard_d2s_v3", "targetDedicatedNodes": "two",
        "virtualMachineConfiguration": ubuntu_configuration().as_dict()})
    _assert_batch_error(response, 400, "InvalidPropertyValue")
    assert response.detail("PropertyName") == "targetDedicatedNodes"
    assert response.detail("PropertyValue") == "two"


def test_an_invalid_enum_value_lists_the_allowed_ones(raw, client, pool_id):
    job = unique_id("job")
    response = raw.request("POST", "/jobs", body={"id": job, "poolInfo": {"poolId": pool_id},
                                                  "onAllTasksComplete": "explode"})
    _assert_batch_error(response, 400, "InvalidPropertyValue")
    assert "terminatejob" in response.detail("Reason")


# ---- oversized collections -------------------------------------------------------------------------
def _task_collection(count: int, padding: int = 0) -> dict:
    task = {"commandLine": "/bin/true"}
    if padding:
        task["environmentSettings"] = [{"name": "PAD", "value": "x" * padding}]
    return {"value": [{"id": f"t{n}", **task} for n in range(count)]}


@pytest.fixture(scope="module")
def empty_job(client, pool_id) -> str:
    job = unique_id("job")
    client.create_job(models.BatchJobCreateOptions(id=job, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
    client.begin_disable_job(job, models.BatchJobDisableOptions(disable_tasks="wait"), polling_interval=0.05).result()
    return job


def test_a_collection_of_101_tasks_is_413(raw, client, empty_job):
    response = raw.request("POST", f"/jobs/{empty_job}/addtaskcollection", body=_task_collection(101))
    _assert_batch_error(response, 413, "RequestBodyTooLarge")
    assert list(client.list_tasks(empty_job)) == []


def test_a_collection_over_one_megabyte_is_413(raw, client, empty_job):
    body = json.dumps(_task_collection(50, padding=25_000)).encode()
    assert len(body) > 1024 * 1024
    response = raw.request("POST", f"/jobs/{empty_job}/addtaskcollection", body=body)
    _assert_batch_error(response, 413, "RequestBodyTooLarge")
    assert list(client.list_tasks(empty_job)) == []


def test_a_chunked_body_over_one_megabyte_is_413(server, empty_job):
    raw = RawClient(server.url)
    body = json.dumps(_task_collection(50, padding=25_000)).encode()
    path = f"/jobs/{empty_job}/addtaskcollection?api-version={API_VERSION}"
    headers = {"ocp-date": email.utils.formatdate(usegmt=True),
               "Content-Type": "application/json; odata=minimalmetadata", "Transfer-Encoding": "chunked"}
    headers["Authorization"] = f"SharedKey {raw.account}:" + shared_key_signature(
        raw.key, "POST", path.split("?")[0], path.split("?")[1], headers, raw.account)
    connection = http.client.HTTPConnection(raw.host, raw.port, timeout=30)
    try:
        connection.request("POST", path, body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                           headers=headers, encode_chunked=True)
        response = connection.getresponse()
        payload = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413
    assert payload["code"] == "RequestBodyTooLarge"


def test_a_collection_of_exactly_100_small_tasks_is_accepted(raw, client, empty_job):
    response = raw.request("POST", f"/jobs/{empty_job}/addtaskcollection", body=_task_collection(100))
    assert response.status == 200
    results = response.json()["value"]
    assert len(results) == 100 and all(r["status"] == "success" for r in results)
    assert len(list(client.list_tasks(empty_job))) == 100


# ---- verbs and paths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", [("PUT", "/pools"), ("DELETE", "/supportedimages"),
                                          ("POST", "/pools/some-pool/nodes"), ("PATCH", "/jobs")])
def test_a_wrong_verb_is_refused_in_the_batch_format(raw, method, path):
    response = raw.request(method, path, body={} if method in ("PUT", "POST", "PATCH") else None)
    _assert_batch_error(response, 405, "InvalidUri")
    assert method in response.json()["message"]["value"]


def test_an_unknown_path_is_refused_in_the_batch_format(raw):
    response = raw.request("GET", "/certificates")
    _assert_batch_error(response, 400, "InvalidUri")


# ---- response headers --------------------------------------------------------------------------------
def test_create_and_get_carry_the_headers_the_sdk_reads(raw):
    pool = unique_id("headers")
    body = pool_options(pool, nodes=0).as_dict()
    created = raw.request("POST", "/pools", body=body, headers={"client-request-id": "my-request-1"})
    assert created.status == 201
    assert created.headers["client-request-id"] == "my-request-1"
    assert created.headers["dataserviceversion"] == "3.0"
    assert created.headers["dataserviceid"].endswith(f"/pools/{pool}")
    assert re.fullmatch(r"0x[0-9A-F]{15}", created.headers["etag"])
    email.utils.parsedate_to_datetime(created.headers["last-modified"])

    fetched = raw.request("GET", f"/pools/{pool}")
    entity = fetched.json()
    assert fetched.headers["etag"] == entity["eTag"]
    assert entity["odata.metadata"].endswith("$metadata#pools/@Element")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", entity["creationTime"])
    assert fetched.headers["last-modified"] == email.utils.format_datetime(
        email.utils.parsedate_to_datetime(fetched.headers["last-modified"]), usegmt=True)


def test_errors_without_details_omit_values(raw):
    response = raw.request("GET", "/pools/definitely-missing")
    body = _assert_batch_error(response, 404, "PoolNotFound")
    assert "values" not in body
    assert body["message"]["value"].startswith("The specified pool does not exist.")


def test_lists_have_absolute_next_links_and_none_on_the_last_page(raw, client):
    prefix = unique_id("links")
    for n in range(3):
        client.create_pool(pool_options(f"{prefix}-{n}", nodes=0))
    first = raw.request("GET", f"/pools?maxresults=2&$filter=startswith(id,%27{prefix}%27)")
    assert first.status == 200
    page = first.json()
    assert [p["id"] for p in page["value"]] == [f"{prefix}-0", f"{prefix}-1"]
    next_link = page["odata.nextLink"]
    assert next_link.startswith(f"http://{raw.host}:{raw.port}/pools?")
    second = raw.request("GET", next_link.split(f":{raw.port}", 1)[1], api_version=None)
    assert second.status == 200
    assert [p["id"] for p in second.json()["value"]] == [f"{prefix}-2"]
    assert "odata.nextLink" not in second.json()


def test_status_endpoint_unsigned_is_a_health_check_that_reveals_nothing(server, raw):
    raw.request("GET", "/pools")
    response = raw.request("GET", "/localbatch/status", sign=False, api_version=None)
    assert response.status == 200
    assert response.json() == {"status": "ok", "store": "ok"}
    assert server.location not in response.body.decode() and raw.account not in response.body.decode()


def test_status_endpoint_signed_describes_the_account_and_counts_its_requests(raw):
    raw.request("GET", "/pools")
    response = raw.request("GET", "/localbatch/status", api_version=None)
    assert response.status == 200
    status = response.json()
    assert status["status"] == "ok" and status["account"] == raw.account
    assert status["requests"]["list_pools"] >= 1
    assert os.path.isdir(status["location"])


def test_status_endpoint_with_a_bad_signature_is_refused(raw):
    response = raw.request("GET", "/localbatch/status", api_version=None,
                           authorization=f"SharedKey {raw.account}:AAAA")
    _assert_batch_error(response, 403, "AuthenticationFailed")


# ---- conditional requests (etag= / match_condition= / if_(un)modified_since=) -------------------------
def test_etag_conditions_on_pools(client):
    pool = unique_id("cond")
    client.create_pool(pool_options(pool, nodes=0))
    # Allocation finishing changes the pool (and its ETag): start from a steady pool.
    first = wait_for(lambda: (p := client.get_pool(pool)).allocation_state == "steady" and p, "a steady pool")
    client.update_pool(pool, models.BatchPoolUpdateOptions(display_name="v2"),
                       etag=first.etag, match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceModifiedError) as caught:  # first.etag is stale now
        client.update_pool(pool, models.BatchPoolUpdateOptions(display_name="v3"),
                           etag=first.etag, match_condition=MatchConditions.IfNotModified)
    assert caught.value.status_code == 412
    assert caught.value.error.code == "ConditionNotMet"
    current = client.get_pool(pool)
    assert current.display_name == "v2"
    with pytest.raises(ResourceModifiedError) as caught:
        client.get_pool(pool, etag=current.etag, match_condition=MatchConditions.IfModified)
    assert caught.value.status_code == 304
    assert client.get_pool(pool, etag=first.etag, match_condition=MatchConditions.IfModified).display_name == "v2"
    assert client.pool_exists(pool, etag=current.etag, match_condition=MatchConditions.IfNotModified) is True


def test_etag_and_date_conditions_on_jobs_and_tasks(client, pool_id):
    job_id = unique_id("cond")
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id),
                                                   priority=1))
    job = client.get_job(job_id)
    client.update_job(job_id, models.BatchJobUpdateOptions(priority=2))
    with pytest.raises(ResourceModifiedError):
        client.begin_delete_job(job_id, etag=job.etag, match_condition=MatchConditions.IfNotModified,
                                polling_interval=0.05)
    assert client.get_job(job_id).state == "active"
    long_ago = job.creation_time - dt.timedelta(hours=1)
    with pytest.raises(HttpResponseError) as caught:
        client.update_job(job_id, models.BatchJobUpdateOptions(priority=3), if_unmodified_since=long_ago)
    assert caught.value.status_code == 412
    assert client.get_job(job_id, if_modified_since=long_ago).priority == 2

    # A task that runs changes (and its ETag with it): keep this one waiting in a disabled job.
    client.begin_disable_job(job_id, models.BatchJobDisableOptions(disable_tasks="wait"),
                             polling_interval=0.05).result()
    client.create_task(job_id, models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    task = client.get_task(job_id, "t")
    assert client.get_task(job_id, "t", etag=task.etag, match_condition=MatchConditions.IfNotModified).id == "t"
    with pytest.raises(ResourceModifiedError):
        client.replace_task(job_id, "t", models.BatchTask(constraints=models.BatchTaskConstraints(
            max_task_retry_count=1)), etag="0x0000000000000AB", match_condition=MatchConditions.IfNotModified)


def _details_of(error: HttpResponseError) -> dict[str, str]:
    return {detail.code: detail.message for detail in error.error.details}


@pytest.mark.parametrize("value", ["0", "1001", "ten"])
def test_maxresults_out_of_range_is_400(raw, value):
    response = raw.request("GET", f"/pools?maxresults={value}")
    _assert_batch_error(response, 400, "InvalidQueryParameterValue")
    assert response.detail("QueryParameterName") == "maxresults"
