"""Output files: uploaded to a real Azurite container through a SAS after the task's process exits,
by file pattern and upload condition, with upload headers; failures reported as FileUpload...
failures that exit conditions and dependencies see."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from localbatch.accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME

from .support import batch_client, create_job, read_task_file, run_task, unique_id, wait_for, wait_for_task


def _sas_url(container, write: bool = True, name: str | None = None) -> str:
    """A SAS URL for the container, or for a container of another `name` in the same account."""
    name = name or container.container_name
    permission = ContainerSasPermissions(write=write, create=write, read=True, list=True)
    sas = generate_container_sas(container.account_name, name,
                                 account_key=container.credential.account_key, permission=permission,
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    return f"{container.url.rsplit('/', 1)[0]}/{name}?{sas}"


def _output(pattern: str, container_url: str, path: str | None = None, condition: str = "taskcompletion",
            headers: dict[str, str] | None = None) -> models.OutputFile:
    return models.OutputFile(
        file_pattern=pattern,
        destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
            container_url=container_url, path=path,
            upload_headers=[models.OutputFileUploadHeader(name=k, value=v) for k, v in (headers or {}).items()] or None)),
        upload_options=models.OutputFileUploadConfiguration(upload_condition=condition))


def _blobs(container) -> dict[str, bytes]:
    return {blob.name: container.download_blob(blob.name).readall() for blob in container.list_blobs()}


WRITE_FILES = ("/bin/bash -c 'mkdir -p sub/deep && echo out > out.txt && echo a > sub/a.log && "
               "echo b > sub/deep/b.log && echo skip > sub/c.dat && echo said-hello'")


def test_patterns_and_paths_name_the_blobs(client, pool_id, container):
    url = _sas_url(container)
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, WRITE_FILES, output_files=[
        _output("out.txt", url, path="results/renamed.txt"),
        _output("**/*.log", url, path="logs"),
        _output("sub/*.dat", url),
        _output("../std*.txt", url, path=f"{job_id}/std"),
    ])
    assert task.execution_info.result == "success"
    assert task.output_files[1].file_pattern == "**/*.log"
    assert _blobs(container) == {
        "results/renamed.txt": b"out\n", "logs/sub/a.log": b"a\n", "logs/sub/deep/b.log": b"b\n",
        "c.dat": b"skip\n", f"{job_id}/std/stdout.txt": b"said-hello\n", f"{job_id}/std/stderr.txt": b""}
    log = read_task_file(client, job_id, task.id, "fileuploadout.txt")
    assert "sub/deep/b.log" in log and "sig=" not in log


def test_a_task_stays_running_until_its_output_files_are_uploaded(server, client, pool_id, container):
    url = _sas_url(container)
    job_id = create_job(client, pool_id)
    with server.holding("output_files_uploading"):
        client.create_task(job_id, models.BatchTaskCreateOptions(
            id="t", command_line="/bin/bash -c 'echo result > r.txt'", output_files=[_output("r.txt", url)]))
        # Its upload is held: the task stays running, and nothing is in the container yet.
        wait_for(lambda: read_task_file(client, job_id, "t", "wd/r.txt") == "result\n", "the task's process to write")
        task = wait_for_task(client, job_id, "t", states=("running",))
        assert task.execution_info.end_time is None
        assert _blobs(container) == {}
    task = wait_for_task(client, job_id, "t")
    assert task.execution_info.result == "success"
    assert _blobs(container) == {"r.txt": b"result\n"}


@pytest.mark.parametrize("exit_code, uploaded", [
    (0, {"success.txt", "completion.txt"}), (3, {"failure.txt", "completion.txt"})], ids=["exit-0", "exit-3"])
def test_upload_conditions(client, pool_id, container, exit_code, uploaded):
    url = _sas_url(container)
    job_id = create_job(client, pool_id)
    run_task(client, job_id, f"/bin/bash -c 'echo x > f.txt; exit {exit_code}'", output_files=[
        _output("f.txt", url, path="success.txt", condition="tasksuccess"),
        _output("f.txt", url, path="failure.txt", condition="taskfailure"),
        _output("f.txt", url, path="completion.txt", condition="taskcompletion")])
    assert set(_blobs(container)) == uploaded


def test_upload_headers_reach_the_blob(client, pool_id, container):
    url = _sas_url(container)
    job_id = create_job(client, pool_id)
    run_task(client, job_id, "/bin/bash -c 'echo {} > data.json'", output_files=[
        _output("data.json", url, headers={"x-ms-blob-content-type": "application/json",
                                           "x-ms-meta-origin": "batch"})])
    properties = container.get_blob_client("data.json").get_blob_properties()
    assert properties.content_settings.content_type == "application/json"
    assert properties.metadata == {"origin": "batch"}


def test_a_missing_container_fails_the_task_with_file_upload_container_not_found(client, pool_id, container):
    url = _sas_url(container, name="no-such-container")
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/bash -c 'echo x > f.txt'", output_files=[_output("f.txt", url)])
    info = task.execution_info
    assert (info.result, info.exit_code, info.retry_count) == ("failure", 0, 0)
    assert (info.failure_info.category, info.failure_info.code) == ("usererror", "FileUploadContainerNotFound")
    errors = read_task_file(client, job_id, task.id, "fileuploaderr.txt")
    assert "container" in errors


def test_a_sas_without_write_permission_fails_without_revealing_the_signature(client, pool_id, container):
    job_id = create_job(client, pool_id)
    task = run_task(client, job_id, "/bin/bash -c 'echo x > f.txt'",
                    output_files=[_output("f.txt", _sas_url(container, write=False))],
                    constraints=models.BatchTaskConstraints(max_task_retry_count=2))
    failure = task.execution_info.failure_info
    assert failure.code == "FileUploadMiscError"
    assert task.execution_info.retry_count == 0  # upload errors are not retried
    assert "HTTP 403" in failure.message and "sig=" not in failure.message
    assert "sig=" not in read_task_file(client, job_id, task.id, "fileuploaderr.txt")


@pytest.mark.parametrize("file_upload_error, expected_state", [
    (models.ExitOptions(job_action="none"), "active"), (None, "completed")], ids=["fileUploadError-none", "default"])
def test_exit_conditions_see_file_upload_errors(client, pool_id, container, file_upload_error, expected_state):
    url = _sas_url(container, name="missing")
    job_id = create_job(client, pool_id, task_failure_mode="performexitoptionsjobaction")
    run_task(client, job_id, "/bin/bash -c 'echo x > f.txt'", output_files=[_output("f.txt", url)],
             exit_conditions=models.ExitConditions(file_upload_error=file_upload_error))
    wait_for(lambda: client.get_job(job_id).state == expected_state, f"job {job_id} {expected_state}")


def test_a_failed_upload_blocks_dependent_tasks(client, pool_id, container):
    url = _sas_url(container, name="missing")
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    client.create_tasks(job_id, [
        models.BatchTaskCreateOptions(id="uploads", command_line="/bin/bash -c 'echo x > f.txt'",
                                      output_files=[_output("f.txt", url)]),
        models.BatchTaskCreateOptions(id="after", command_line="/bin/true",
                                      depends_on=models.BatchTaskDependencies(task_ids=["uploads"])),
        models.BatchTaskCreateOptions(id="marker", command_line="/bin/true")])
    wait_for_task(client, job_id, "uploads")
    wait_for_task(client, job_id, "marker")
    assert client.get_task(job_id, "after").state == "active"


def test_a_container_url_that_is_not_http_is_refused_without_echoing_it(client, pool_id):
    job_id = create_job(client, pool_id)
    with pytest.raises(HttpResponseError) as caught:
        client.create_task(job_id, models.BatchTaskCreateOptions(
            id="t", command_line="/bin/true", output_files=[_output("f.txt", "ftp://host/c?sig=secret")]))
    details = {d.code: d.message for d in caught.value.error.details}
    assert (caught.value.status_code, details["PropertyName"]) == (
        400, "outputFiles[0].destination.container.containerUrl")
    assert "secret" not in str(caught.value)


def test_output_files_through_the_aio_client(server, pool_id, container):
    url = _sas_url(container)
    job_id = unique_id("aio-out")

    async def scenario() -> None:
        async with AsyncBatchClient(server.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME,
                                                                        WELL_KNOWN_ACCOUNT_KEY)) as client:
            await client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id)))
            await client.create_task(job_id, models.BatchTaskCreateOptions(
                id="t", command_line="/bin/bash -c 'echo aio > r.txt'", output_files=[_output("r.txt", url)]))
    asyncio.run(scenario())
    with batch_client(server.url) as client:
        assert wait_for_task(client, job_id, "t").execution_info.result == "success"
    assert _blobs(container) == {"r.txt": b"aio\n"}
