"""Careless or hostile requests get the service's 4xx answers, never a 500 or a hang: deeply
nested bodies and filters, header bytes that are not UTF-8, stale or unreadable dates (a
captured signed request cannot be replayed later), NUL bytes in paths, bad timeOut values and
ids with encoded newlines."""
from __future__ import annotations

import email.utils
import socket
import time

import pytest

from .support import API_VERSION, RawClient, create_job, shared_key_signature
from .test_auth_and_protocol import _assert_batch_error


def test_a_body_nested_100000_deep_is_an_invalid_request_body(raw):
    body = b"[" * 100_000 + b"]" * 100_000
    response = raw.request("POST", "/jobs", body=body)
    _assert_batch_error(response, 400, "InvalidRequestBody")
    assert "nested too deeply" in response.detail("Reason")


@pytest.mark.parametrize("expression", [
    "(" * 1000 + "state eq 'active'" + ")" * 1000,
    "not " * 1200 + "state eq 'active'",  # the request line stays under aiohttp's 8 KiB limit
])
def test_a_filter_nested_too_deeply_is_an_invalid_query_parameter(raw, expression):
    response = raw.request("GET", "/jobs?$filter=" + expression.replace(" ", "%20").replace("'", "%27"))
    _assert_batch_error(response, 400, "InvalidQueryParameterValue")
    assert response.detail("QueryParameterName") == "$filter"


def test_a_header_that_is_not_utf8_is_an_invalid_header_value(server):
    date = email.utils.formatdate(usegmt=True)
    request = (f"GET /pools?api-version={API_VERSION} HTTP/1.1\r\nHost: localhost\r\nocp-date: {date}\r\n"
               "Authorization: SharedKey localbatch:AAAA\r\nConnection: close\r\n").encode() \
        + b"ocp-custom: caf\xff\r\n\r\n"
    with socket.create_connection((server.host, server.port), timeout=30) as connection:
        connection.sendall(request)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b'"code":"InvalidHeaderValue"' in reply


@pytest.mark.parametrize("offset_minutes", [-20, 20])
def test_a_date_more_than_15_minutes_from_the_clock_fails_authentication(raw, offset_minutes):
    stale = email.utils.formatdate(time.time() + offset_minutes * 60, usegmt=True)
    response = raw.request("GET", "/pools", headers={"ocp-date": stale})
    _assert_batch_error(response, 403, "AuthenticationFailed")
    assert "ocp-date" in response.detail("AuthenticationErrorDetail")


def test_an_unreadable_date_fails_authentication(raw):
    response = raw.request("GET", "/pools", headers={"ocp-date": "yesterday, about noon"})
    _assert_batch_error(response, 403, "AuthenticationFailed")
    assert "RFC 1123" in response.detail("AuthenticationErrorDetail")


def test_a_date_within_the_window_is_accepted(raw):
    recent = email.utils.formatdate(time.time() - 5 * 60, usegmt=True)
    assert raw.request("GET", "/pools", headers={"ocp-date": recent}).status == 200


def test_a_signed_request_replayed_after_the_window_is_refused(server):
    raw = RawClient(server.url)
    captured = {"ocp-date": email.utils.formatdate(time.time() - 16 * 60, usegmt=True)}
    path, query = "/jobs/replayed", f"api-version={API_VERSION}"
    captured["Authorization"] = "SharedKey {}:{}".format(raw.account, shared_key_signature(
        raw.key, "DELETE", path, query, captured, raw.account))
    response = raw.request("DELETE", f"{path}?{query}", headers=captured, sign=False, api_version=None)
    _assert_batch_error(response, 403, "AuthenticationFailed")


def test_a_resource_file_path_with_a_nul_byte_is_an_invalid_property(raw, client, pool_id):
    job_id = create_job(client, pool_id)
    response = raw.request("POST", f"/jobs/{job_id}/tasks", body={
        "id": "nul", "commandLine": "/bin/true",
        "resourceFiles": [{"httpUrl": "http://127.0.0.1:9/x", "filePath": "in\u0000put.txt"}]})
    _assert_batch_error(response, 400, "InvalidPropertyValue")
    assert "NUL" in response.detail("Reason")


@pytest.mark.parametrize("value", ["abc", "-1", "0", "1.5"])
def test_a_timeout_that_is_not_a_positive_whole_number_is_refused(raw, value):
    response = raw.request("GET", f"/pools?timeOut={value}")
    _assert_batch_error(response, 400, "InvalidQueryParameterValue")
    assert response.detail("QueryParameterName") == "timeOut"


def test_a_timeout_in_seconds_is_accepted(raw):
    assert raw.request("GET", "/pools?timeOut=30").status == 200


def test_an_id_with_an_encoded_newline_gets_a_batch_error(raw):
    response = raw.request("GET", "/pools/bad%0Aid")
    _assert_batch_error(response, 404, "PoolNotFound")
