"""Where FUSE cannot work (here: localbatch running as a user other than root), a pool with a blob
mount is refused with a 400 that says why, instead of nodes that never mount."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from .support import RunningEmulator, batch_client, pool_options, unique_id

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def test_a_pool_with_a_blob_mount_is_refused_with_the_reason_when_fuse_cannot_work():
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run localbatch as another user than root")
    location = Path(tempfile.mkdtemp(prefix="localbatch-unprivileged-"))
    location.chmod(0o777)  # the unprivileged emulator keeps its state here
    emulator = RunningEmulator(location / "state", run_as=NOBODY if os.geteuid() == 0 else ())
    try:
        with batch_client(emulator.url()) as client:
            with pytest.raises(HttpResponseError) as caught:
                client.create_pool(pool_options(unique_id("mounts"), 1, mount_configuration=[
                    models.MountConfiguration(azure_blob_file_system_configuration=models.AzureBlobFileSystemConfiguration(
                        account_name="devstoreaccount1", container_name="data", relative_mount_path="data",
                        account_key="a2V5"))]))
    finally:
        emulator.kill()
        shutil.rmtree(location, ignore_errors=True)
    assert caught.value.status_code == 400
    details = {detail.code: detail.message for detail in caught.value.error.details}
    assert details["PropertyName"] == "mountConfiguration[0].azureBlobFileSystemConfiguration"
    assert "needs root" in details["Reason"] and "a2V5" not in str(caught.value)
