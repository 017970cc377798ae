"""Where Docker engines cannot run (here: localbatch running as a user other than root), a
container pool is refused with a 400 that says why, instead of nodes that never work."""
from __future__ import annotations

from azure.batch import models

from .support import pool_refused_when_not_root, unique_id


def test_a_container_pool_is_refused_with_the_reason_when_engines_cannot_run():
    refused = pool_refused_when_not_root(models.BatchPoolCreateOptions(
        id=unique_id("containers"), vm_size="standard_d2s_v3", target_dedicated_nodes=1,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(
                publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
            node_agent_sku_id="batch.node.ubuntu 22.04",
            container_configuration=models.BatchContainerConfiguration(type="dockerCompatible"))))
    assert refused.status_code == 400
    details = {detail.code: detail.message for detail in refused.error.details}
    assert details["PropertyName"] == "virtualMachineConfiguration.containerConfiguration"
    assert "need root" in details["Reason"]
