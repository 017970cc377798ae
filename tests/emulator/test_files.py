"""Files of tasks and of compute nodes: list, download (with ocp-range), properties and delete
through the SDK; percent-encoded paths and path traversal over raw HTTP."""
from __future__ import annotations

import datetime as dt
import shlex
from urllib.parse import quote

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from .support import create_job, create_pool_and_wait, decoded_path, run_task, unique_id

# Writes wd/out.txt, "wd/sub dir/a b.txt" and prints to stdout and stderr.
WRITER = ("/bin/bash -c 'mkdir -p \"sub dir\" && printf 0123456789 > out.txt && printf spaced > \"sub dir/a b.txt\" "
          "&& echo to-stdout && echo to-stderr >&2'")


@pytest.fixture(scope="module")
def written(client, pool_id):
    """(job id, task id) of a completed task that wrote a few files."""
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, WRITER, task_id="writer")
    assert task.execution_info.exit_code == 0
    return job_id, "writer"


# ---- task files ----------------------------------------------------------------------------------
def test_list_task_files_top_level(client, written):
    entries = {f.name: f for f in client.list_task_files(*written)}
    assert {"stdout.txt", "stderr.txt", "wd"} <= set(entries)
    assert entries["wd"].is_directory is True and entries["wd"].properties is None
    stdout = entries["stdout.txt"]
    assert stdout.is_directory is False
    assert stdout.properties.content_length == len(b"to-stdout\n")
    assert stdout.properties.content_type == "text/plain"
    assert stdout.properties.last_modified is not None and stdout.properties.creation_time is not None
    assert stdout.url.endswith(f"/jobs/{written[0]}/tasks/writer/files/stdout.txt")


def test_list_task_files_recursive(client, written):
    entries = {f.name: f for f in client.list_task_files(*written, recursive=True)}
    assert {"wd/out.txt", "wd/sub dir", "wd/sub dir/a b.txt"} <= set(entries)
    assert entries["wd/sub dir"].is_directory is True
    assert entries["wd/out.txt"].properties.content_length == 10
    assert decoded_path(entries["wd/sub dir/a b.txt"].url).endswith("/files/wd/sub dir/a b.txt")


def test_list_task_files_with_filter(client, written):
    names = [f.name for f in client.list_task_files(*written, recursive=True, filter="startswith(name, 'wd/sub')")]
    assert names == ["wd/sub dir", "wd/sub dir/a b.txt"]


def test_download_task_files(client, written):
    assert b"".join(client.download_task_file(*written, "stdout.txt")) == b"to-stdout\n"
    assert b"".join(client.download_task_file(*written, "stderr.txt")) == b"to-stderr\n"
    assert b"".join(client.download_task_file(*written, "wd/sub dir/a b.txt")) == b"spaced"


@pytest.mark.parametrize("ocp_range, expected", [
    ("bytes=0-3", b"0123"),
    ("bytes=4-", b"456789"),
    ("bytes=7-100", b"789"),
    ("bytes=-2", b"89"),
])
def test_download_task_file_with_ocp_range(client, written, ocp_range, expected):
    assert b"".join(client.download_task_file(*written, "wd/out.txt", ocp_range=ocp_range)) == expected


def test_ranged_download_still_answers_200(raw, written):
    response = raw.request("GET", f"/jobs/{written[0]}/tasks/writer/files/wd%2Fout.txt",
                           headers={"ocp-range": "bytes=2-4"})
    assert response.status == 200
    assert response.body == b"234"


def test_task_file_properties(client, written, raw):
    properties = client.get_task_file_properties(*written, "wd/out.txt")
    assert properties.content_length == 10
    assert properties.is_directory is False
    assert properties.file_mode.endswith("644") or properties.file_mode.endswith("664")
    assert decoded_path(properties.url).endswith(f"/jobs/{written[0]}/tasks/writer/files/wd/out.txt")
    assert isinstance(properties.creation_time, dt.datetime)

    head = raw.request("HEAD", f"/jobs/{written[0]}/tasks/writer/files/wd%2Fout.txt")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == "10"
    assert head.headers["ocp-batch-file-isdirectory"] == "False"
    assert head.headers["ocp-batch-file-mode"].startswith("0100")
    assert "ocp-creation-time" in head.headers and "last-modified" in head.headers
    directory = raw.request("HEAD", f"/jobs/{written[0]}/tasks/writer/files/wd%2Fsub%20dir")
    assert directory.status == 200
    assert directory.headers["ocp-batch-file-isdirectory"] == "True"


def test_missing_task_file_is_file_not_found(client, written, raw):
    # A streamed download and a HEAD carry no error body the SDK reads: only the status shows.
    with pytest.raises(ResourceNotFoundError) as caught:
        b"".join(client.download_task_file(*written, "wd/nothing-here.txt"))
    assert caught.value.status_code == 404
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_task_file_properties(*written, "nothing/at/all")
    assert caught.value.status_code == 404
    response = raw.request("GET", f"/jobs/{written[0]}/tasks/writer/files/wd%2Fnothing-here.txt")
    assert response.status == 404 and response.error_code == "FileNotFound"


def test_files_of_a_task_that_has_not_run_are_not_found(client, pool_id):
    job_id = create_job(client, pool_id)
    client.begin_disable_job(job_id, models.BatchJobDisableOptions(disable_tasks="wait"), polling_interval=0.05).result()
    client.create_task(job_id, models.BatchTaskCreateOptions(id="waiting", command_line="/bin/true"))
    with pytest.raises(ResourceNotFoundError):
        b"".join(client.download_task_file(job_id, "waiting", "stdout.txt"))
    with pytest.raises(ResourceNotFoundError) as caught:
        list(client.list_task_files(job_id, "waiting"))
    assert caught.value.error.code == "FileNotFound"


def test_delete_task_files(client, pool_id):
    job_id = create_job(client, pool_id)
    run_task(client, job_id, WRITER, task_id="writer")
    client.delete_task_file(job_id, "writer", "wd/out.txt")
    with pytest.raises(ResourceNotFoundError):
        client.get_task_file_properties(job_id, "writer", "wd/out.txt")
    with pytest.raises(HttpResponseError) as caught:
        client.delete_task_file(job_id, "writer", "wd/sub dir")  # not empty, not recursive
    assert caught.value.status_code == 409
    client.delete_task_file(job_id, "writer", "wd/sub dir", recursive=True)
    names = [f.name for f in client.list_task_files(job_id, "writer", recursive=True)]
    assert not any(name.startswith("wd/sub dir") for name in names)
    assert "stdout.txt" in names
    with pytest.raises(ResourceNotFoundError) as caught:
        client.delete_task_file(job_id, "writer", "wd/out.txt")
    assert caught.value.error.code == "FileNotFound"


# ---- node files ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def started_node(client):
    """(pool id, node id) of a node whose start task wrote its outputs."""
    pool = unique_id("filepool")
    nodes = create_pool_and_wait(client, pool, nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/bash -c 'echo booted; echo shared > $AZ_BATCH_NODE_SHARED_DIR/note.txt'"))
    return pool, nodes[0].id


def test_list_node_files(client, started_node):
    top = {f.name for f in client.list_node_files(*started_node)}
    assert {"shared", "startup", "workitems", "applications", "fsmounts", "volatile"} <= top
    everything = {f.name: f for f in client.list_node_files(*started_node, recursive=True)}
    assert {"startup/stdout.txt", "startup/stderr.txt", "startup/wd", "shared/note.txt"} <= set(everything)
    assert everything["startup/wd"].is_directory is True
    assert everything["shared/note.txt"].properties.content_length == len(b"shared\n")


def test_download_node_file_and_its_properties(client, started_node):
    assert b"".join(client.download_node_file(*started_node, "startup/stdout.txt")) == b"booted\n"
    assert b"".join(client.download_node_file(*started_node, "shared/note.txt", ocp_range="bytes=0-1")) == b"sh"
    properties = client.get_node_file_properties(*started_node, "shared/note.txt")
    assert properties.content_length == 7 and properties.is_directory is False
    assert decoded_path(properties.url).endswith(f"/nodes/{started_node[1]}/files/shared/note.txt")


def test_task_outputs_are_node_files_under_workitems(client, started_node):
    pool, node = started_node
    job_id = create_job(client, pool)
    run_task(client, job_id, "/bin/echo from-task", task_id="t")
    path = f"workitems/{job_id}/job-1/t/stdout.txt"
    assert b"".join(client.download_node_file(pool, node, path)) == b"from-task\n"


def test_delete_node_file(client, started_node):
    client.delete_node_file(*started_node, "shared/note.txt")
    with pytest.raises(ResourceNotFoundError):
        client.get_node_file_properties(*started_node, "shared/note.txt")
    with pytest.raises(ResourceNotFoundError) as caught:
        client.delete_node_file(*started_node, "shared/note.txt")
    assert caught.value.error.code == "FileNotFound"


def test_node_files_of_a_missing_node(client, started_node):
    with pytest.raises(ResourceNotFoundError) as caught:
        list(client.list_node_files(started_node[0], "tvmps_missing_d"))
    assert caught.value.error.code == "NodeNotFound"


# ---- path encoding and traversal (raw HTTP) -----------------------------------------------------
SECRET = b"top secret outside every node"


@pytest.fixture(scope="module")
def secret_outside(server):
    """A file in the emulator's location but outside every node and task directory."""
    path = f"{server.location}/secret.txt"
    with open(path, "wb") as handle:
        handle.write(SECRET)
    return path


@pytest.fixture(scope="module")
def linked(client, pool_id):
    """A task whose working directory holds symlinks pointing out of it."""
    job_id = create_job(client, pool_id)
    run_task(client, job_id, "/bin/bash -c 'ln -s / rootlink && ln -s /etc/passwd passwdlink && echo ok'",
             task_id="links")
    return job_id


TRAVERSALS = [
    "..%2F..%2F..%2F..%2F..%2F..%2Fsecret.txt",
    "%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fsecret.txt",
    "wd%2F..%2F..%2F..%2F..%2F..%2F..%2F..%2Fsecret.txt",
    "..%5C..%5C..%5C..%5C..%5C..%5Csecret.txt",
    "%2Fetc%2Fpasswd",
    "..",
    "%2E%2E",
    "wd%2F%00",
]


@pytest.mark.parametrize("encoded", TRAVERSALS)
def test_encoded_traversal_in_task_file_paths_is_refused(raw, written, secret_outside, encoded):
    for method in ("GET", "HEAD", "DELETE"):
        response = raw.request(method, f"/jobs/{written[0]}/tasks/writer/files/{encoded}")
        assert response.status in (400, 404), (method, response.status)
        assert SECRET not in response.body and b"root:" not in response.body
        if method == "GET":
            assert response.error_code in ("InvalidUri", "FileNotFound", "InvalidQueryParameterValue")
    with open(secret_outside, "rb") as handle:
        assert handle.read() == SECRET  # DELETE did not reach it


@pytest.mark.parametrize("encoded", TRAVERSALS)
def test_encoded_traversal_in_node_file_paths_is_refused(raw, started_node, secret_outside, encoded):
    pool, node = started_node
    for method in ("GET", "HEAD", "DELETE"):
        response = raw.request(method, f"/pools/{pool}/nodes/{node}/files/{encoded}")
        assert response.status in (400, 404), (method, response.status)
        assert SECRET not in response.body and b"root:" not in response.body
    with open(secret_outside, "rb") as handle:
        assert handle.read() == SECRET


@pytest.mark.parametrize("target", [
    "/jobs/{job}/tasks/writer/files/../../../../../../secret.txt",
    "/jobs/{job}/tasks/writer/files/wd/../../../../../../../secret.txt",
    "/jobs/{job}/tasks/writer/files/./../../secret.txt",
    "/pools/{pool}/nodes/{node}/files/../../secret.txt",
    "/pools/{pool}/nodes/{node}/files/shared/../../../secret.txt",
])
def test_raw_dot_segments_never_reach_a_file_outside(raw, written, started_node, secret_outside, target):
    path = target.format(job=written[0], pool=started_node[0], node=started_node[1])
    response = raw.request("GET", path)
    assert response.status in (400, 404)
    assert SECRET not in response.body


@pytest.mark.parametrize("path", ["wd%2Fpasswdlink", "wd%2Frootlink%2Fetc%2Fpasswd", "wd%2Frootlink"])
def test_symlinks_out_of_the_task_directory_are_not_followed(raw, linked, path):
    response = raw.request("GET", f"/jobs/{linked}/tasks/links/files/{path}")
    assert response.status in (400, 404)
    assert b"root:" not in response.body


def test_listing_does_not_descend_through_symlinks(client, linked):
    names = [f.name for f in client.list_task_files(linked, "links", recursive=True)]
    assert "wd/rootlink" in names
    assert not any(name.startswith("wd/rootlink/") for name in names)


def test_percent_encoded_slash_is_a_path_separator_inside_the_file_path(raw, written):
    encoded = quote("wd/sub dir/a b.txt", safe="")
    assert encoded == "wd%2Fsub%20dir%2Fa%20b.txt"
    response = raw.request("GET", f"/jobs/{written[0]}/tasks/writer/files/{encoded}")
    assert response.status == 200 and response.body == b"spaced"


@pytest.mark.parametrize("name", ["ünïcødé ✓.txt", "100%.txt", "a+b=c&d.txt", "hash#mark.txt", "q?uery.txt",
                                  "semi;colon,comma.txt", "tab\there.txt"])
def test_file_names_with_special_characters_round_trip(client, pool_id, name):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, f"/usr/bin/truncate -s 1 {shlex.quote(name)}")  # a one-byte file
    assert task.execution_info.exit_code == 0, task.execution_info.failure_info
    path = f"wd/{name}"
    assert path in {f.name for f in client.list_task_files(job_id, task.id, recursive=True)}
    assert client.get_task_file_properties(job_id, task.id, path).content_length == 1
    assert b"".join(client.download_task_file(job_id, task.id, path)) == b"\0"
    client.delete_task_file(job_id, task.id, path)
    assert path not in {f.name for f in client.list_task_files(job_id, task.id, recursive=True)}


@pytest.mark.parametrize("ocp_range", ["bytes=abc", "lines=1-2", "bytes=-"])
def test_a_malformed_ocp_range_is_400(raw, written, ocp_range):
    response = raw.request("GET", f"/jobs/{written[0]}/tasks/writer/files/wd%2Fout.txt",
                           headers={"ocp-range": ocp_range})
    assert response.status == 400
    assert response.error_code == "InvalidHeaderValue"
    assert response.detail("HeaderName") == "ocp-range"
