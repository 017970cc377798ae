"""common.storage against Azurite: uploads and read-only, short-lived SAS URLs."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.storage.blob import BlobServiceClient

from common.helpers import unique_resource_name
from common.storage import (
    create_container_if_not_exists,
    create_read_only_blob_sas_url,
    create_read_only_container_sas_url,
    delete_container_if_exists,
    upload_file_to_container,
)


@pytest.fixture
def container_name(local_blob_service_client: BlobServiceClient) -> Iterator[str]:
    name = unique_resource_name("storage-test")
    assert create_container_if_not_exists(local_blob_service_client, name) is True
    try:
        yield name
    finally:
        delete_container_if_exists(local_blob_service_client, name)


def http(method: str, url: str, data: bytes = b"") -> tuple[int, bytes]:
    headers = {"x-ms-blob-type": "BlockBlob"} if method == "PUT" else {}
    request = urllib.request.Request(url, data=data if method == "PUT" else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_create_and_delete_container_are_idempotent(local_blob_service_client: BlobServiceClient, container_name: str) -> None:
    assert create_container_if_not_exists(local_blob_service_client, container_name) is False
    assert delete_container_if_exists(local_blob_service_client, container_name) is True
    assert delete_container_if_exists(local_blob_service_client, container_name) is False


def test_a_blob_sas_url_reads_that_blob_and_nothing_else(
    local_blob_service_client: BlobServiceClient, container_name: str, tmp_path: Path
) -> None:
    source = tmp_path / "input.txt"
    source.write_bytes("naïve input\n".encode("utf-8"))
    blob_name = upload_file_to_container(local_blob_service_client, container_name, source)

    url = create_read_only_blob_sas_url(local_blob_service_client, container_name, blob_name, timedelta(minutes=30))

    assert blob_name == "input.txt"
    assert http("GET", url) == (200, "naïve input\n".encode("utf-8"))
    assert http("PUT", url, b"overwritten")[0] == 403  # read-only
    other_blob = url.replace("/input.txt?", "/other.txt?")
    assert http("GET", other_blob)[0] == 403  # this blob only
    assert http("GET", url.split("?")[0])[0] in (403, 404)  # and only with the signature


def test_a_sas_is_short_lived_and_allows_for_clock_skew(
    local_blob_service_client: BlobServiceClient, container_name: str
) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    url = create_read_only_blob_sas_url(local_blob_service_client, container_name, "x", timedelta(minutes=30))
    query = parse_qs(urlsplit(url).query)

    start = datetime.strptime(query["st"][0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    expiry = datetime.strptime(query["se"][0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert query["sp"] == ["r"]
    assert before - timedelta(minutes=6) <= start <= before
    assert before + timedelta(minutes=29) <= expiry <= before + timedelta(minutes=31)


def test_a_container_sas_url_lists_and_reads_but_does_not_write(
    local_blob_service_client: BlobServiceClient, container_name: str, tmp_path: Path
) -> None:
    source = tmp_path / "a.txt"
    source.write_text("a", encoding="utf-8")
    upload_file_to_container(local_blob_service_client, container_name, source, blob_name="folder/a.txt")

    url = create_read_only_container_sas_url(local_blob_service_client, container_name, timedelta(minutes=5))
    base, token = url.split("?", 1)

    status, listing = http("GET", f"{base}?restype=container&comp=list&{token}")
    assert status == 200 and b"<Name>folder/a.txt</Name>" in listing
    assert http("GET", f"{base}/folder/a.txt?{token}") == (200, b"a")
    assert http("PUT", f"{base}/new.txt?{token}", b"new")[0] == 403


def test_a_sas_must_be_valid_for_some_time(local_blob_service_client: BlobServiceClient) -> None:
    with pytest.raises(ValueError, match="positive"):
        create_read_only_blob_sas_url(local_blob_service_client, "c", "b", timedelta(0))
