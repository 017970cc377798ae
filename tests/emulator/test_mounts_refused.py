"""Where FUSE cannot work (here: localbatch running as a user other than root), a pool with a blob
mount is refused with a 400 that says why, instead of nodes that never mount."""
from __future__ import annotations

from azure.batch import models

from .support import pool_options, pool_refused_when_not_root, unique_id


def test_a_pool_with_a_blob_mount_is_refused_with_the_reason_when_fuse_cannot_work():
    refused = pool_refused_when_not_root(pool_options(unique_id("mounts"), 1, mount_configuration=[
        models.MountConfiguration(azure_blob_file_system_configuration=models.AzureBlobFileSystemConfiguration(
            account_name="devstoreaccount1", container_name="data", relative_mount_path="data",
            account_key="a2V5"))]))
    assert refused.status_code == 400
    details = {detail.code: detail.message for detail in refused.error.details}
    assert details["PropertyName"] == "mountConfiguration[0].azureBlobFileSystemConfiguration"
    assert "needs root" in details["Reason"] and "a2V5" not in str(refused)
