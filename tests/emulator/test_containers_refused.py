"""Where Docker engines cannot run (here: localbatch running as a user other than root), a
container pool is refused with a 400 that says why, instead of nodes that never work."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from .support import RunningEmulator, batch_client, unique_id

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def test_a_container_pool_is_refused_with_the_reason_when_engines_cannot_run():
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run localbatch as another user than root")
    location = Path(tempfile.mkdtemp(prefix="localbatch-unprivileged-"))
    location.chmod(0o777)  # the unprivileged emulator keeps its state here
    emulator = RunningEmulator(location / "state", run_as=NOBODY if os.geteuid() == 0 else ())
    try:
        with batch_client(emulator.url()) as client:
            with pytest.raises(HttpResponseError) as caught:
                client.create_pool(models.BatchPoolCreateOptions(
                    id=unique_id("containers"), vm_size="standard_d2s_v3", target_dedicated_nodes=1,
                    virtual_machine_configuration=models.VirtualMachineConfiguration(
                        image_reference=models.BatchVmImageReference(
                            publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
                        node_agent_sku_id="batch.node.ubuntu 22.04",
                        container_configuration=models.BatchContainerConfiguration(type="dockerCompatible"))))
    finally:
        emulator.kill()
        shutil.rmtree(location, ignore_errors=True)
    assert caught.value.status_code == 400
    details = {detail.code: detail.message for detail in caught.value.error.details}
    assert details["PropertyName"] == "virtualMachineConfiguration.containerConfiguration"
    assert "need root" in details["Reason"]
