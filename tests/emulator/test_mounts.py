"""Mount configuration: blob containers mounted on every node as real FUSE file systems backed by
Azurite, through the real SDK.

Each mount is a helper process per node (as blobfuse2 is on a Batch node), made before the start
task, gone with the node, its pool or the emulator: the tests read /proc/self/mounts and the
process table to check that nothing is left. Where FUSE cannot work the module is skipped with
the emulator's own reason, which is also what a pool with a blob mount gets as its 400 there.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
from pathlib import Path
from typing import Optional

import pytest
from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from localbatch import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME, LocalBatchServer
from localbatch.node.blobmount.manager import fuse_unavailable_reason
from localbatch.node.network import random_node_subnet

from .conftest import Azurite, fast_timings
from .support import (LRO_POLLING, RawClient, RunningEmulator, batch_client, command_lines, create_job, delete_pool_and_wait, pool_options, read_task_file, reboot_options,
                      run_task, unique_id, wait_for, wait_for_nodes, wait_for_task)

pytestmark = pytest.mark.skipif(fuse_unavailable_reason() is not None, reason=str(fuse_unavailable_reason()))

HELPER_MODULE = "localbatch.node.blobmount.helper"
# Bound of a wait for mounting nodes: each mount starts a Python helper (about a second when busy).
MOUNT_WAIT = 90.0


# ---- builders ---------------------------------------------------------------------------------------
def blob_mount(azurite: Azurite, container: str, path: str = "data", *, key: Optional[str] = None,
               sas: Optional[str] = None, options: Optional[str] = None,
               account: Optional[str] = None) -> models.MountConfiguration:
    return models.MountConfiguration(azure_blob_file_system_configuration=models.AzureBlobFileSystemConfiguration(
        account_name=account or azurite.account_name, container_name=container, relative_mount_path=path,
        account_key=None if sas else (key or azurite.account_key), sas_key=sas, blobfuse_options=options))


def create_mounted_pool(client, pool_id: str, mounts: list, nodes: int = 1, states: tuple[str, ...] = ("idle",),
                        **extra) -> list[models.BatchNode]:
    client.create_pool(pool_options(pool_id, nodes, mount_configuration=mounts, **extra))
    return wait_for_nodes(client, pool_id, nodes, states=states, timeout=MOUNT_WAIT)



def node_root(server: LocalBatchServer, pool_id: str, node_id: str) -> Path:
    return Path(server.location) / "nodes" / pool_id.lower() / node_id


def mount_point(server: LocalBatchServer, pool_id: str, node_id: str, path: str = "data") -> Path:
    return node_root(server, pool_id, node_id) / "fsmounts" / path


def fuse_mounts_below(directory: Path) -> list[tuple[str, str]]:
    """(mount point, file system type) of what /proc/self/mounts lists at or below `directory`."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1].replace("\\040", " ")
        if point == str(directory) or point.startswith(f"{directory}/"):
            found.append((point, fields[2]))
    return found


def helper_processes(directory: Path) -> list[int]:
    """Mount helpers whose settings lie below `directory` (a pool's directory)."""
    return [pid for pid, command in command_lines().items() if HELPER_MODULE in command and str(directory) in command]


def error_details(node: models.BatchNode) -> dict[str, str]:
    return {detail.name: detail.value for detail in node.errors[0].error_details}


def shell(script: str) -> str:
    return f"/bin/bash -c '{script}'"


@pytest.fixture
def files(container):
    """The test's container, with an input blob uploaded beforehand."""
    container.upload_blob("inputs/data.txt", b"input from blob storage\n")
    return container


# ---- the happy path -------------------------------------------------------------------------------------
def test_tasks_and_the_start_task_read_and_write_the_mounted_container(storage_client, storage_server, blob_storage,
                                                                       files):
    pool_id = unique_id("mounts")
    start_task = models.BatchStartTask(command_line=shell('cat "$AZ_BATCH_NODE_MOUNTS_DIR/data/inputs/data.txt"'),
                                       wait_for_success=True)
    node = create_mounted_pool(storage_client, pool_id, [blob_mount(blob_storage, files.container_name)],
                               start_task=start_task)[0]
    startup = b"".join(storage_client.download_node_file(pool_id, node.id, "startup/stdout.txt")).decode()
    assert startup == "input from blob storage\n"  # mounted before the start task ran
    point = mount_point(storage_server, pool_id, node.id)
    assert fuse_mounts_below(point) == [(str(point), "fuse.blobfuse2")]

    job_id = create_job(storage_client, pool_id)
    task = run_task(storage_client, job_id, shell(
        'set -e; cd "$AZ_BATCH_NODE_MOUNTS_DIR/data"; cat inputs/data.txt; mkdir results; '
        'echo "written by $AZ_BATCH_TASK_ID" > results/out.txt; ls -p; ls results; '
        'stat -c "%a %s" inputs/data.txt; stat -c "%a" results'))
    assert task.execution_info.result == "success", read_task_file(storage_client, job_id, task.id, "stderr.txt")
    assert read_task_file(storage_client, job_id, task.id).splitlines() == [
        "input from blob storage", "inputs/", "results/", "out.txt", "755 24", "775"]
    assert files.download_blob("results/out.txt").readall() == f"written by {task.id}\n".encode()
    marker = files.get_blob_client("results").get_blob_properties()
    assert (marker.size, marker.metadata) == (0, {"hdi_isfolder": "true"})  # blobfuse2's directory marker
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)


def test_a_second_node_sees_what_the_first_uploaded_once_it_was_closed(storage_client, blob_storage, container):
    pool_id = unique_id("mounts")
    first, second = create_mounted_pool(storage_client, pool_id, [blob_mount(blob_storage, container.container_name)],
                                        nodes=2)
    job_id = create_job(storage_client, pool_id)
    writer = run_task(storage_client, job_id, shell('echo "from $AZ_BATCH_NODE_ID" > "$AZ_BATCH_NODE_MOUNTS_DIR/data/shared.txt"'),
                      affinity_info=models.BatchAffinityInfo(affinity_id=first.affinity_id))
    reader = run_task(storage_client, job_id, shell('cat "$AZ_BATCH_NODE_MOUNTS_DIR/data/shared.txt"'),
                      affinity_info=models.BatchAffinityInfo(affinity_id=second.affinity_id))
    assert (writer.node_info.node_id, reader.node_info.node_id) == (first.id, second.id)
    assert reader.execution_info.result == "success", read_task_file(storage_client, job_id, reader.id, "stderr.txt")
    assert read_task_file(storage_client, job_id, reader.id) == f"from {first.id}\n"
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)


def test_files_renamed_removed_and_truncated_through_the_mount_change_the_blobs(storage_client, blob_storage, files):
    pool_id = unique_id("mounts")
    create_mounted_pool(storage_client, pool_id, [blob_mount(blob_storage, files.container_name)])
    job_id = create_job(storage_client, pool_id)
    task = run_task(storage_client, job_id, shell(
        'set -e; cd "$AZ_BATCH_NODE_MOUNTS_DIR/data"; mkdir -p a/b; echo one > a/b/f.txt; mv a renamed; '
        'truncate -s 3 inputs/data.txt; rm -f gone.txt; echo x > gone.txt; rm gone.txt; '
        'echo kept > open.txt; exec 3>>open.txt; rm open.txt; echo more >&3; exec 3>&-; '
        'if rmdir renamed 2>/dev/null; then echo removed; else echo "not empty"; fi; '
        'if cat missing.txt 2>/dev/null; then echo found; else echo "no such file"; fi'))
    assert task.execution_info.result == "success", read_task_file(storage_client, job_id, task.id, "stderr.txt")
    assert read_task_file(storage_client, job_id, task.id).splitlines() == ["not empty", "no such file"]
    names = sorted(blob.name for blob in files.list_blobs())
    assert names == ["inputs/data.txt", "renamed", "renamed/b", "renamed/b/f.txt"]
    assert files.download_blob("renamed/b/f.txt").readall() == b"one\n"
    assert files.download_blob("inputs/data.txt").readall() == b"inp"
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)


def test_a_sas_key_mounts_and_allow_other_presents_blobfuse2s_open_modes(storage_client, storage_server, blob_storage,
                                                                         files):
    sas = generate_container_sas(blob_storage.account_name, files.container_name, account_key=blob_storage.account_key,
                                 permission=ContainerSasPermissions(read=True, write=True, list=True, delete=True),
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    pool_id = unique_id("mounts")
    node = create_mounted_pool(storage_client, pool_id, [blob_mount(
        blob_storage, files.container_name, "by sas", sas=sas, options="-o allow_other -o attr_timeout=240")])[0]
    point = mount_point(storage_server, pool_id, node.id, "by sas")
    assert fuse_mounts_below(point) == [(str(point), "fuse.blobfuse2")]
    job_id = create_job(storage_client, pool_id)
    task = run_task(storage_client, job_id, shell(
        'set -e; cd "$AZ_BATCH_NODE_MOUNTS_DIR/by sas"; stat -c "%a" inputs/data.txt inputs; echo sas > by-sas.txt'))
    assert task.execution_info.result == "success", read_task_file(storage_client, job_id, task.id, "stderr.txt")
    assert read_task_file(storage_client, job_id, task.id).split() == ["777", "777"]
    assert files.download_blob("by-sas.txt").readall() == b"sas\n"
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)


# ---- failures: the node is unusable with the mount error --------------------------------------------------
WRONG_KEY = "d3Jvbmcta2V5LW5vdC10aGUtYWNjb3VudHMtb3duLWtleS1hdC1hbGwtMDEyMzQ1Njc4OQ=="


@pytest.mark.parametrize("case, mount_kwargs, reason", [
    ("wrong-key", {"key": WRONG_KEY}, "(HTTP 403)"),
    ("unknown-account", {"account": "nosuchaccount"}, "failed to authenticate credentials"),
    ("missing-container", {"container": "no-such-container"}, "ContainerNotFound"),
    ("unknown-option", {"options": "--no-such-flag"}, "unknown flag: --no-such-flag"),
], ids=["wrong-key", "unknown-account", "missing-container", "unknown-option"])
def test_a_mount_that_fails_leaves_the_node_unusable_with_the_mount_error(storage_client, storage_server,
                                                                        blob_storage, container, case,
                                                                        mount_kwargs, reason):
    container_name = mount_kwargs.pop("container", container.container_name)
    pool_id = unique_id("mounts")
    started = models.BatchStartTask(command_line="/bin/true")
    node = create_mounted_pool(storage_client, pool_id, [blob_mount(blob_storage, container_name, "m", **mount_kwargs)],
                               states=("unusable",), start_task=started)[0]
    error = node.errors[0]
    assert (error.code, error.message) == ("MountConfigurationError",
                                           "An error was encountered while configuring specified mount(s)")
    details = error_details(node)
    assert details["MountConfigurationPath"] == "m"
    assert reason in details["Message"]
    assert WRONG_KEY not in details["Message"] and blob_storage.account_key not in details["Message"]
    assert node.start_task_info is None  # the start task never ran
    root = node_root(storage_server, pool_id, node.id)
    assert fuse_mounts_below(root) == [] and helper_processes(root.parent) == []
    log = b"".join(storage_client.download_node_file(pool_id, node.id, "fsmounts/blobfuse-m.log")).decode()
    assert reason in log and WRONG_KEY not in log and blob_storage.account_key not in log
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)


def test_a_mount_helper_that_dies_is_noticed_and_the_node_becomes_unusable(storage_client, storage_server,
                                                                          blob_storage, container):
    pool_id = unique_id("mounts")
    node = create_mounted_pool(storage_client, pool_id, [blob_mount(blob_storage, container.container_name)])[0]
    pool_dir = Path(storage_server.location) / "nodes" / pool_id.lower()
    (helper,) = helper_processes(pool_dir)
    os.kill(helper, signal.SIGKILL)
    node = wait_for_nodes(storage_client, pool_id, 1, states=("unusable",), timeout=MOUNT_WAIT)[0]
    assert node.errors[0].code == "MountConfigurationError"
    assert "exited" in error_details(node)["Message"]
    assert fuse_mounts_below(node_root(storage_server, pool_id, node.id)) == []
    # A reboot mounts it again.
    storage_client.begin_reboot_node(pool_id, node.id, reboot_options(), polling_interval=LRO_POLLING).result()
    node = wait_for_nodes(storage_client, pool_id, 1, timeout=MOUNT_WAIT)[0]
    assert not node.errors
    point = mount_point(storage_server, pool_id, node.id)
    assert fuse_mounts_below(point) == [(str(point), "fuse.blobfuse2")]
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)


# ---- nothing leaks ----------------------------------------------------------------------------------------
def test_deleting_the_pool_unmounts_and_leaves_no_helper_or_cache(storage_client, storage_server, blob_storage,
                                                                 files):
    pool_id = unique_id("mounts")
    nodes = create_mounted_pool(storage_client, pool_id, [blob_mount(blob_storage, files.container_name),
                                                          blob_mount(blob_storage, files.container_name, "again")],
                                nodes=2)
    pool_dir = Path(storage_server.location) / "nodes" / pool_id.lower()
    assert len(fuse_mounts_below(pool_dir)) == 4 and len(helper_processes(pool_dir)) == 4
    job_id = create_job(storage_client, pool_id)
    run_task(storage_client, job_id, shell('cat "$AZ_BATCH_NODE_MOUNTS_DIR/again/inputs/data.txt"'))  # fills a cache
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)
    assert fuse_mounts_below(pool_dir) == [] and helper_processes(pool_dir) == []
    wait_for(lambda: not pool_dir.exists(), "the pool's directories to be removed")
    assert [blob.name for blob in files.list_blobs()] == ["inputs/data.txt"]  # removal never walked into the mount
    assert all(node.id for node in nodes)


def test_stopping_the_server_unmounts_and_a_restart_mounts_again(tmp_path, blob_storage, files):
    location = tmp_path / "localbatch"
    subnet = random_node_subnet()
    pool_id = unique_id("mounts")

    def server() -> LocalBatchServer:
        return LocalBatchServer(str(location), timings=fast_timings(), node_subnet=subnet,
                                auto_storage_connection_string=blob_storage.connection_string)
    with server() as first, batch_client(first.url) as client:
        node = create_mounted_pool(client, pool_id, [blob_mount(blob_storage, files.container_name)])[0]
        point = mount_point(first, pool_id, node.id)
        assert fuse_mounts_below(point) == [(str(point), "fuse.blobfuse2")]
    assert fuse_mounts_below(location) == [] and helper_processes(location) == []
    assert not any((location / "nodes" / pool_id.lower() / ".mounts" / node.id).glob("*/cache"))
    with server() as second, batch_client(second.url) as client:
        assert fuse_mounts_below(point) == [(str(point), "fuse.blobfuse2")]  # before the first answer
        assert client.get_node(pool_id, node.id).state == "idle"
        job_id = create_job(client, pool_id)
        task = run_task(client, job_id, shell('cat "$AZ_BATCH_NODE_MOUNTS_DIR/data/inputs/data.txt"'))
        assert read_task_file(client, job_id, task.id) == "input from blob storage\n"
    assert fuse_mounts_below(location) == [] and helper_processes(location) == []


# ---- secrets ----------------------------------------------------------------------------------------------
def test_mount_secrets_are_never_echoed_nor_logged(storage_client, storage_server, blob_storage, container, caplog):
    raw = RawClient(storage_server.url)
    pool_id = unique_id("mounts")
    sas = "sv=2024-08-04&sr=c&sp=rl&se=2099-01-01&sig=c2VjcmV0LXNhcy1zaWduYXR1cmU%3D"
    with caplog.at_level("DEBUG", logger="localbatch"):
        create_mounted_pool(storage_client, pool_id, [blob_mount(blob_storage, container.container_name),
                                                      blob_mount(blob_storage, container.container_name, "s", sas=sas)],
                            states=("unusable",))
        job_id = unique_id("job")
        auto_pool = models.BatchAutoPoolSpecification(pool_lifetime_option="job", pool=models.BatchPoolSpecification(
            vm_size="standard_d2s_v3", virtual_machine_configuration=pool_options("x").virtual_machine_configuration,
            mount_configuration=[blob_mount(blob_storage, container.container_name)]))
        storage_client.create_job(models.BatchJobCreateOptions(
            id=job_id, pool_info=models.BatchPoolInfo(auto_pool_specification=auto_pool)))
        answers = [raw.request("GET", f"/pools/{pool_id}").body, raw.request("GET", "/pools").body,
                   raw.request("GET", f"/jobs/{job_id}").body]
    pool = json.loads(answers[0])
    blob = pool["mountConfiguration"][0]["azureBlobFileSystemConfiguration"]
    assert blob["accountName"] == blob_storage.account_name and "accountKey" not in blob
    assert "sasKey" not in pool["mountConfiguration"][1]["azureBlobFileSystemConfiguration"]
    for text in [*(answer.decode() for answer in answers), caplog.text]:
        assert blob_storage.account_key not in text and "c2VjcmV0LXNhcy1zaWduYXR1cmU" not in text
    helpers = helper_processes(Path(storage_server.location) / "nodes" / pool_id.lower())
    assert len(helpers) == 1  # the mount with the key; the one with the made-up SAS failed
    for pid in helpers:  # the key reaches the helper in a file it deletes, not its command line or environment
        for part in ("cmdline", "environ"):
            assert blob_storage.account_key.encode() not in Path(f"/proc/{pid}/{part}").read_bytes()
    assert not list((Path(storage_server.location) / "nodes" / pool_id.lower() / ".mounts").rglob("credentials.json"))
    node = next(iter(storage_client.list_nodes(pool_id)))
    for name in ("fsmounts/blobfuse-data.log", "fsmounts/blobfuse-s.log"):
        log = b"".join(storage_client.download_node_file(pool_id, node.id, name)).decode()
        assert blob_storage.account_key not in log and "c2VjcmV0LXNhcy1zaWduYXR1cmU" not in log
    storage_client.begin_delete_job(job_id, polling_interval=LRO_POLLING).result()
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)


# ---- validation -----------------------------------------------------------------------------------------
def _blob(**values) -> dict:
    return {"azureBlobFileSystemConfiguration": {"accountName": "devstoreaccount1", "containerName": "data",
                                                 "relativeMountPath": "data", "accountKey": "a2V5", **values}}


@pytest.mark.parametrize("mounts, status, code, detail", [
    ([{"nfsMountConfiguration": {"source": "host:/export", "relativeMountPath": "n"}}], 501, "FeatureNotEmulated",
     ("Feature", "mountConfiguration[0].nfsMountConfiguration")),
    ([{"cifsMountConfiguration": {"source": "//h/s", "relativeMountPath": "c", "username": "u", "password": "p"}}],
     501, "FeatureNotEmulated", ("Feature", "mountConfiguration[0].cifsMountConfiguration")),
    ([{"azureFileShareConfiguration": {"accountName": "a", "azureFileUrl": "https://a.file.core.windows.net/s",
                                       "accountKey": "k", "relativeMountPath": "f"}}],
     501, "FeatureNotEmulated", ("Feature", "mountConfiguration[0].azureFileShareConfiguration")),
    ([_blob(accountKey=None, identityReference={"resourceId": ""})], 400, "MissingRequiredProperty",
     ("PropertyName", "mountConfiguration[0].azureBlobFileSystemConfiguration.identityReference.resourceId")),
    ([{**_blob(), "nfsMountConfiguration": {"source": "h:/e", "relativeMountPath": "n"}}], 400,
     "InvalidPropertyValue", ("PropertyName", "mountConfiguration[0]")),
    ([{}], 400, "InvalidPropertyValue", ("PropertyName", "mountConfiguration[0]")),
    ([_blob(accountKey=None)], 400, "InvalidPropertyValue",
     ("PropertyName", "mountConfiguration[0].azureBlobFileSystemConfiguration")),
    ([_blob(sasKey="sv=x&sig=y")], 400, "InvalidPropertyValue",
     ("PropertyName", "mountConfiguration[0].azureBlobFileSystemConfiguration")),
    ([_blob(relativeMountPath="")], 400, "MissingRequiredProperty",
     ("PropertyName", "mountConfiguration[0].azureBlobFileSystemConfiguration.relativeMountPath")),
    ([_blob(relativeMountPath="/abs")], 400, "InvalidPropertyValue",
     ("PropertyName", "mountConfiguration[0].azureBlobFileSystemConfiguration.relativeMountPath")),
    ([_blob(relativeMountPath="../up")], 400, "InvalidPropertyValue",
     ("PropertyName", "mountConfiguration[0].azureBlobFileSystemConfiguration.relativeMountPath")),
    ([_blob(relativeMountPath=".")], 400, "InvalidPropertyValue",
     ("PropertyName", "mountConfiguration[0].azureBlobFileSystemConfiguration.relativeMountPath")),
    ([_blob(), _blob(relativeMountPath="data/")], 400, "InvalidPropertyValue",
     ("PropertyName", "mountConfiguration[1].azureBlobFileSystemConfiguration.relativeMountPath")),
    ([_blob(), _blob(relativeMountPath="data/inner")], 400, "InvalidPropertyValue",
     ("PropertyName", "mountConfiguration[1].azureBlobFileSystemConfiguration.relativeMountPath")),
    ([_blob(accountName="Not_An_Account")], 400, "InvalidPropertyValue",
     ("PropertyName", "mountConfiguration[0].azureBlobFileSystemConfiguration.accountName")),
    ([_blob(containerName="UPPER")], 400, "InvalidPropertyValue",
     ("PropertyName", "mountConfiguration[0].azureBlobFileSystemConfiguration.containerName")),
    ([_blob(relativeMountPath=f"m{index}") for index in range(11)], 400, "InvalidPropertyValue",
     ("PropertyName", "mountConfiguration")),
], ids=["nfs", "cifs", "azure-files", "identity-without-resource-id", "two-kinds", "no-kind", "no-credential",
        "two-credentials", "no-path", "absolute-path", "escaping-path", "dot-path", "duplicate-path", "nested-path",
        "account-name", "container-name", "eleven-mounts"])
def test_mount_configurations_are_checked_as_the_service_checks_them(storage_server, mounts, status, code, detail):
    raw = RawClient(storage_server.url)
    body = {"id": unique_id("mounts"), "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 0,
            "virtualMachineConfiguration": pool_options("x").virtual_machine_configuration.as_dict(),
            "mountConfiguration": [{key: {k: v for k, v in value.items() if v is not None} for key, value in m.items()}
                                   for m in mounts]}
    response = raw.request("POST", "/pools", body, headers={"Content-Type": "application/json; odata=minimalmetadata"})
    assert (response.status, response.error_code) == (status, code), response.body
    assert response.detail(detail[0]) == detail[1]
    assert "a2V5" not in response.body.decode() and "sig=y" not in response.body.decode()


def test_the_sdk_sees_the_mount_configuration_it_sent_without_its_key(storage_client, blob_storage, container):
    pool_id = unique_id("mounts")
    storage_client.create_pool(pool_options(pool_id, 0, mount_configuration=[
        blob_mount(blob_storage, container.container_name, options="-o attr_timeout=240")]))
    blob = storage_client.get_pool(pool_id).mount_configuration[0].azure_blob_file_system_configuration
    assert (blob.account_name, blob.container_name, blob.relative_mount_path, blob.blobfuse_options) == (
        blob_storage.account_name, container.container_name, "data", "-o attr_timeout=240")
    assert blob.account_key is None and blob.sas_key is None
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)


def test_a_pool_update_with_a_mount_kind_not_emulated_is_refused_and_changes_nothing(storage_client, blob_storage, container):
    pool_id = unique_id("mounts")
    storage_client.create_pool(pool_options(pool_id, 0))
    with pytest.raises(HttpResponseError) as caught:
        storage_client.update_pool(pool_id, models.BatchPoolUpdateOptions(mount_configuration=[
            models.MountConfiguration(nfs_mount_configuration=models.NfsMountConfiguration(
                source="host:/export", relative_mount_path="n"))]))
    assert caught.value.status_code == 501
    assert storage_client.get_pool(pool_id).mount_configuration is None
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)


# ---- auto-pools: a job's and a job schedule's ---------------------------------------------------------------
def _auto_pool(blob_storage: Azurite, container: str, lifetime: str) -> models.BatchPoolInfo:
    return models.BatchPoolInfo(auto_pool_specification=models.BatchAutoPoolSpecification(
        pool_lifetime_option=lifetime, pool=models.BatchPoolSpecification(
            vm_size="standard_d2s_v3", target_dedicated_nodes=1,
            virtual_machine_configuration=pool_options("x").virtual_machine_configuration,
            mount_configuration=[blob_mount(blob_storage, container)])))


def test_a_job_schedules_auto_pools_mount_with_the_key_it_never_shows(storage_client, storage_server, blob_storage,
                                                                      files):
    schedule_id = unique_id("schedule")
    storage_client.create_job_schedule(models.BatchJobScheduleCreateOptions(
        id=schedule_id, schedule=models.BatchJobScheduleConfiguration(),
        job_specification=models.BatchJobSpecification(pool_info=_auto_pool(blob_storage, files.container_name, "job"))))
    job_id = wait_for(lambda: storage_client.get_job_schedule(schedule_id).execution_info.recent_job,
                      f"job schedule {schedule_id} to create its job").id
    storage_client.create_task(job_id, models.BatchTaskCreateOptions(
        id="reader", command_line=shell('cat "$AZ_BATCH_NODE_MOUNTS_DIR/data/inputs/data.txt"')))
    wait_for_task(storage_client, job_id, "reader", timeout=MOUNT_WAIT)
    assert read_task_file(storage_client, job_id, "reader") == "input from blob storage\n"
    raw = RawClient(storage_server.url)
    for target in (f"/jobschedules/{schedule_id}", f"/jobs/{job_id}"):
        assert blob_storage.account_key not in raw.request("GET", target).body.decode()
    auto_pool_id = storage_client.get_job(job_id).execution_info.pool_id
    storage_client.begin_terminate_job_schedule(schedule_id, polling_interval=LRO_POLLING).result()
    storage_client.begin_delete_job_schedule(schedule_id, polling_interval=LRO_POLLING).result()
    pool_dir = Path(storage_server.location) / "nodes" / auto_pool_id.lower()
    wait_for(lambda: not fuse_mounts_below(pool_dir) and not helper_processes(pool_dir),
             "the auto-pool's mounts to go with it", MOUNT_WAIT)


def test_a_node_removed_by_a_resize_or_reimaged_is_unmounted_and_a_reimage_mounts_again(storage_client,
                                                                                       storage_server,
                                                                                       blob_storage, container):
    pool_id = unique_id("mounts")
    kept, removed = create_mounted_pool(storage_client, pool_id, [blob_mount(blob_storage, container.container_name)],
                                        nodes=2)
    storage_client.begin_remove_nodes(pool_id, models.BatchNodeRemoveOptions(node_ids=[removed.id]),
                                      polling_interval=LRO_POLLING).result()
    wait_for_nodes(storage_client, pool_id, 1, timeout=MOUNT_WAIT)
    removed_root = node_root(storage_server, pool_id, removed.id)
    assert fuse_mounts_below(removed_root) == []
    assert [pid for pid in helper_processes(removed_root.parent)
            if removed.id in Path(f"/proc/{pid}/cmdline").read_text()] == []
    storage_client.begin_reimage_node(pool_id, kept.id, models._models.BatchNodeReimageOptions(  # pylint: disable=protected-access
        node_reimage_option="requeue"),
                                      polling_interval=LRO_POLLING).result()
    wait_for_nodes(storage_client, pool_id, 1, timeout=MOUNT_WAIT)
    point = mount_point(storage_server, pool_id, kept.id)
    assert fuse_mounts_below(point) == [(str(point), "fuse.blobfuse2")]
    assert len(helper_processes(point.parents[2])) == 1  # the pool directory: only the kept node's helper
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)


def test_the_aio_client_creates_a_mounted_pool_and_never_sees_its_key(storage_client, storage_server, blob_storage,
                                                                      container):
    pool_id = unique_id("mounts")

    async def scenario() -> tuple[models.BatchPool, list[models.BatchPool]]:
        async with AsyncBatchClient(storage_server.url,
                                    AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY)) as client:
            await client.create_pool(pool_options(pool_id, 0, mount_configuration=[
                blob_mount(blob_storage, container.container_name)]))
            pool = await client.get_pool(pool_id)
            listed = [listed async for listed in client.list_pools(filter=f"id eq '{pool_id}'")]
            return pool, listed
    pool, listed = asyncio.run(scenario())
    delete_pool_and_wait(storage_client, pool_id, MOUNT_WAIT)
    for seen in (pool, *listed):
        blob = seen.mount_configuration[0].azure_blob_file_system_configuration
        assert (blob.relative_mount_path, blob.account_key, blob.sas_key) == ("data", None, None)


def test_a_killed_emulator_leaves_no_mount_and_the_next_start_mounts_again(tmp_path, blob_storage, files):
    location = tmp_path / "localbatch"
    environment = {"LOCALBATCH_AUTOSTORAGE_CONNECTION_STRING": blob_storage.connection_string,
                   "LOCALBATCH_NODE_SUBNET": random_node_subnet()}
    pool_id = unique_id("mounts")
    emulator = RunningEmulator(location, env=environment)
    try:
        with batch_client(emulator.url()) as client:
            node = create_mounted_pool(client, pool_id, [blob_mount(blob_storage, files.container_name)])[0]
        assert len(fuse_mounts_below(location)) == 1
    finally:
        emulator.kill()  # SIGKILL: its helpers get SIGTERM from the kernel and unmount
    wait_for(lambda: not fuse_mounts_below(location) and not helper_processes(location),
             "the helpers of a killed emulator to unmount and end")
    again = RunningEmulator(location, env=environment)
    try:
        with batch_client(again.url()) as client:
            point = location / "nodes" / pool_id.lower() / node.id / "fsmounts" / "data"
            assert fuse_mounts_below(location) == [(str(point), "fuse.blobfuse2")]
            job_id = create_job(client, pool_id)
            task = run_task(client, job_id, shell('cat "$AZ_BATCH_NODE_MOUNTS_DIR/data/inputs/data.txt"'))
            assert read_task_file(client, job_id, task.id) == "input from blob storage\n"
        assert again.finish(signal.SIGTERM) == 0
    finally:
        again.kill()
    assert fuse_mounts_below(location) == [] and helper_processes(location) == []
