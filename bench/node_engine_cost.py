"""What one container node's Docker engine costs: the memory of its dockerd and containerd, its
data on disk, and how much longer a container node takes from pool creation to idle than a plain
one, and to delete. Needs root and docker.io. Prints figures; asserts nothing.

    .venv/bin/python -m bench.node_engine_cost [--nodes 4] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from azure.batch import BatchClient, models
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError

from common.local import start_localbatch
from localbatch.accounts import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME
from localbatch.node.engines import docker_unavailable_reason
from localbatch.node.layout import NodeLayout
from localbatch.node.network import NODE_SUBNET_ENV_VAR, random_node_subnet
from tests.waiting import wait_for

TIMEOUT = 300.0


def vm_configuration(containers: bool) -> models.VirtualMachineConfiguration:
    if not containers:
        return models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy",
                                                         sku="22_04-lts"),
            node_agent_sku_id="batch.node.ubuntu 22.04")
    return models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204"),
        node_agent_sku_id="batch.node.ubuntu 22.04",
        container_configuration=models.BatchContainerConfiguration(type="dockerCompatible",
                                                                   container_image_names=["busybox:latest"]))


def memory_kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status (VmRSS) or smaps_rollup (Pss), in KiB."""
    source = "smaps_rollup" if field == "Pss" else "status"
    for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def engine_pids(run_dir: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if run_dir in Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def directory_mib(path: str) -> float:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            file = os.path.join(directory, name)
            if os.path.isfile(file) and not os.path.islink(file):
                total += os.path.getsize(file)
    return total / 2 ** 20


def create_and_wait(client: BatchClient, pool_id: str, nodes: int, containers: bool) -> tuple[float, list]:
    started = time.monotonic()
    client.create_pool(models.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d2s_v3",
                                                     target_dedicated_nodes=nodes,
                                                     virtual_machine_configuration=vm_configuration(containers)))

    def all_idle() -> list:
        idle = [node for node in client.list_nodes(pool_id) if node.state == "idle"]
        return idle if len(idle) == nodes else []
    idle = wait_for(all_idle, f"{nodes} idle nodes in {pool_id}", TIMEOUT, poll=0.02)
    return time.monotonic() - started, idle


def delete_and_wait(client: BatchClient, pool_id: str) -> float:
    started = time.monotonic()
    client.begin_delete_pool(pool_id, polling_interval=0.05).result()

    def gone() -> bool:
        try:
            client.get_pool(pool_id)
            return False
        except ResourceNotFoundError:
            return True
    wait_for(gone, f"pool {pool_id} to be deleted", TIMEOUT, poll=0.02)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4, help="nodes of the pool measured at once")
    parser.add_argument("--runs", type=int, default=3, help="one-node pools created per kind, for boot times")
    arguments = parser.parse_args()
    reason = docker_unavailable_reason()
    if reason:
        raise SystemExit(reason)
    environment = {**os.environ, NODE_SUBNET_ENV_VAR: random_node_subnet()}
    with tempfile.TemporaryDirectory() as location:
        state = Path(location) / "state"
        with start_localbatch(state, environment=environment) as emulator, BatchClient(
                emulator.url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY)) as client:
            layout = NodeLayout(str(state / "nodes"))
            boots: dict[bool, list[float]] = {False: [], True: []}
            deletes: list[float] = []
            for run in range(arguments.runs):
                for containers in (False, True):
                    pool_id = f"boot-{int(containers)}-{run}"
                    boots[containers].append(create_and_wait(client, pool_id, 1, containers)[0])
                    deleted = delete_and_wait(client, pool_id)
                    if containers:
                        deletes.append(deleted)
            elapsed, nodes = create_and_wait(client, "many", arguments.nodes, True)
            rss, pss, disk = [], [], []
            for node in nodes:
                engine = layout.engine("many", node.id)
                pids = engine_pids(engine.run_dir)
                rss.append(sum(memory_kib(pid, "VmRSS") for pid in pids) / 1024)
                pss.append(sum(memory_kib(pid, "Pss") for pid in pids) / 1024)
                disk.append(directory_mib(engine.data_root))
            delete_and_wait(client, "many")
    print(f"one node, create -> idle: plain {statistics.median(boots[False]):.2f} s, "
          f"container {statistics.median(boots[True]):.2f} s (median of {arguments.runs})")
    print(f"one container node, delete -> gone: {statistics.median(deletes):.2f} s")
    print(f"{arguments.nodes} container nodes at once, create -> idle: {elapsed:.2f} s")
    print(f"per engine (dockerd + containerd): RSS {statistics.mean(rss):.0f} MiB, PSS {statistics.mean(pss):.0f} MiB, "
          f"data {statistics.mean(disk):.1f} MiB")


if __name__ == "__main__":
    main()
