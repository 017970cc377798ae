"""Compute nodes: allocation (an address and frontend ports from the node network, a host key),
boot and start task, reboot and reimage, removal, scheduling, node users and remote login, and
what a booted node serves (its SSH server and NAT frontends, see node/services.py).

creating -> starting -> (waitingforstarttask) -> idle <-> running; rebooting/reimaging boot
again; leavingpool ends with the node's removal. A pool is `steady` once none of its nodes is
still being created or leaving.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Callable, Optional

from .. import wire
from ..errors import BatchServiceError
from ..node import processes
from ..node.agent import ContainerRun
from ..node.blobmount.manager import MountError
from ..node.containerimages import ImageUnavailable
from ..node.credentials import new_host_key
from ..node.engines import EngineError
from ..node.services import Frontend
from ..node.ssh import NodeSshSettings
from .context import DomainContext, container_configuration
from .endpoints import assign_inbound_endpoints, frontend_ports, nat_pools, remote_login_settings
from .entities import Node, Pool
from .mounts import has_identity_mounts, mount_error, pool_mounts
from .tasks import Tasks
from .validation import user_record

logger = logging.getLogger(__name__)

NODE_AGENT_VERSION = "1.12.7"
# What a node's mount helpers get of what the node gives its programs: CAs, managed identity endpoint.
HELPER_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER")
BOOTING_STATES = ("creating", "starting", "waitingforstarttask", "rebooting", "reimaging")
RESTARTABLE_STATES = ("idle", "running", "starttaskfailed", "unusable", "offline")
NODE_COUNT_NAMES = ("creating", "idle", "offline", "preempted", "rebooting", "reimaging", "running", "starting",
                    "startTaskFailed", "leavingPool", "unknown", "unusable", "waitingForStartTask",
                    "deallocated", "deallocating", "upgradingOS", "total")


class Nodes:
    def __init__(self, context: DomainContext, tasks: Tasks):
        self.context = context
        self.repo = context.repo
        self.agent = context.agent
        self.tasks = tasks
        tasks.on_node_drained = self._run_deferred_action
        # Wired by the service: a node reboots or reimages ("reboot" / "reimage"), its tasks evicted.
        self.on_node_restarted: Callable[[Node, str], None] = lambda node, action: None

    # ---- allocation ------------------------------------------------------------------------------
    def add_node(self, pool: Pool, dedicated: bool) -> Node:
        index = pool.next_node_index
        pool.next_node_index += 1
        seed = f"{self.repo.store.path}/{pool.id}/{pool.data['creationTime']}/{index}"
        node_id = f"tvmps_{hashlib.sha256(seed.encode()).hexdigest()}_{'d' if dedicated else 'p'}"
        now = wire.now_iso()
        address = self.context.network.allocate()
        if address is None:  # the caller checks free_addresses() first
            raise RuntimeError("the node subnet has no free address")
        node = Node(pool.id, {
            "id": node_id, "state": "creating", "schedulingState": "enabled", "stateTransitionTime": now,
            "allocationTime": now, "ipAddress": address,
            "affinityId": f"TVM:{node_id}", "vmSize": pool.data["vmSize"], "totalTasksRun": 0,
            "totalTasksSucceeded": 0, "runningTasksCount": 0, "runningTaskSlotsCount": 0,
            "isDedicated": dedicated,
            "endpointConfiguration": {"inboundEndpoints": []},
            "virtualMachineInfo": {"imageReference": {
                **pool.data["virtualMachineConfiguration"]["imageReference"], "exactVersion": "22.04.202411010"}},
        }, index, host_key=new_host_key())
        self.repo.add_node(pool, node)
        assign_inbound_endpoints(pool, node, self.context.network)
        count_current_nodes(pool)
        self.context.background.spawn(self._boot(pool, node))
        return node

    def free_addresses(self) -> int:
        """How many more nodes the node subnet has addresses for."""
        return self.context.network.free_count()

    def release_network(self, node: Node) -> None:
        """The node is gone: its address and frontend ports can be given out again."""
        self.context.network.release(node.data.get("ipAddress"), frontend_ports(node))

    def remove_node(self, pool: Pool, node: Node, deallocation: str) -> None:
        if node.state == "leavingpool":
            return
        if self._defer_until_tasks_end(node, deallocation, "remove"):
            return
        self.tasks.evict(node, deallocation)
        node.boot_generation += 1
        self.agent.stop(_start_task_key(node), "shutdown")
        node.set_state("leavingpool")
        self.context.background.spawn(self._finish_removal(pool, node))

    async def _finish_removal(self, pool: Pool, node: Node) -> None:
        await self.context.transitions.step("node_leaving")
        await self.stop_services(node)
        await self.stop_engine(node)
        await self.unmount_file_systems(node)
        still_in_pool = pool.nodes.get(node.id) is node  # not already taken away with its pool
        self.repo.remove_node(pool, node)
        if still_in_pool:
            self.release_network(node)
        count_current_nodes(pool)
        self.finish_allocation(pool)
        await asyncio.get_running_loop().run_in_executor(None, self.agent.layout.remove_node, pool.id, node.id)

    def finish_allocation(self, pool: Pool) -> None:
        """resizing -> steady once no node is still being created or leaving the pool."""
        if not pool.attached or pool.allocation_state != "resizing":
            return
        if any(n.state in ("creating", "leavingpool") or n.after_tasks == "remove" for n in pool.nodes.values()):
            return
        pool.set_allocation_state("steady")
        pool.touch()

    async def settle_allocation(self, pool: Pool) -> None:
        """A resize that changed no node still takes an allocation step before it is steady."""
        await self.context.transitions.step("node_creating")
        self.finish_allocation(pool)

    # ---- boot ---------------------------------------------------------------------------------------
    async def _boot(self, pool: Pool, node: Node, restart: Optional[str] = None) -> None:
        """creating -> starting -> (waitingforstarttask) -> idle, running the start task on the way.

        `restart` is "reboot" (the disk is kept) or "reimage" (a fresh OS disk: the node's
        directories are removed first); a node found mid-boot at start-up resumes with "resume".
        """
        generation = node.boot_generation
        transitions = self.context.transitions
        loop = asyncio.get_running_loop()
        if restart in ("reboot", "reimage"):
            await self.stop_services(node)
            await self.stop_engine(node)
            await self.unmount_file_systems(node)
        if restart == "reimage":
            await loop.run_in_executor(None, self.agent.layout.remove_node, pool.id, node.id, True)
        if node.state == "creating":
            await transitions.step("node_creating")
            if generation != node.boot_generation or not node.attached:
                return
            node.set_state("starting")
            self.finish_allocation(pool)  # allocated: steady once no node is still being created
        await transitions.step("node_rebooting" if node.state in ("rebooting", "reimaging") else "node_starting")
        if generation != node.boot_generation or not node.attached:
            return
        await loop.run_in_executor(None, self.agent.layout.create_node, pool.id, node.id)
        if generation != node.boot_generation or not node.attached:
            return
        await self.start_services(pool, node)  # sshd is up before the agent runs the start task
        if generation != node.boot_generation or not node.attached:
            await self.stop_services(node)
            return
        node.data.pop("errors", None)
        if container_configuration(pool) is not None:
            error = await self._start_engine(pool, node)
            if generation != node.boot_generation or not node.attached:
                return  # removed or restarted meanwhile: that path stops the engine and the services
            if error is not None:
                node.data["errors"] = [error]
                node.set_state("unusable")
                return
        if pool.data.get("mountConfiguration"):  # mounted before the start task runs, as on Azure
            error = await self.mount_file_systems(pool, node, generation)
            if generation != node.boot_generation or not node.attached:
                return  # removed or restarted meanwhile: that path unmounts
            if error is not None:
                node.data["errors"] = [error]
                node.set_state("unusable")
                return
        node.data["lastBootTime"] = wire.now_iso()
        node.data["nodeAgentInfo"] = {"version": NODE_AGENT_VERSION, "lastUpdateTime": node.data["lastBootTime"]}
        start_task = pool.data.get("startTask")
        if not start_task:
            node.data.pop("startTask", None)  # the pool's start task was removed since the last boot
            node.data.pop("startTaskInfo", None)
            self._ready(node)
            return
        # As the service reports it on a node: with the defaults it applied.
        node.data["startTask"] = {**start_task, "maxTaskRetryCount": start_task.get("maxTaskRetryCount", 0),
                                  "waitForSuccess": start_task.get("waitForSuccess", True)}
        if not start_task.get("waitForSuccess", True):
            self._ready(node)
            await self._run_start_task(node, start_task, generation)
            return
        node.set_state("waitingforstarttask")
        succeeded = await self._run_start_task(node, start_task, generation)
        if generation != node.boot_generation or not node.attached:
            return
        if succeeded:
            self._ready(node)
        else:
            node.set_state("starttaskfailed")

    # ---- what a booted node serves: SSH and its NAT frontends --------------------------------------
    async def start_services(self, pool: Pool, node: Node) -> None:
        if node.host_key is None:  # a node from a state written before nodes had host keys
            node.host_key = new_host_key()
        rules = {nat["name"]: tuple(nat.get("networkSecurityGroupRules") or []) for nat in nat_pools(pool.data)}
        frontends = [Frontend(endpoint["frontendPort"], endpoint["backendPort"],
                              rules.get(endpoint["name"].rsplit(".", 1)[0], ()))
                     for endpoint in node.data["endpointConfiguration"]["inboundEndpoints"]]
        await self.context.services.start(node.key, self.ssh_settings(node), frontends)
        self._log(node, f"SSH server listening on {node.data['ipAddress']}:22"
                        + "".join(f"; NAT frontend {frontend.port} -> {frontend.backend_port}"
                                  for frontend in frontends))

    def ssh_settings(self, node: Node) -> NodeSshSettings:
        layout = self.agent.layout
        return NodeSshSettings(
            address=node.data["ipAddress"], host_key=node.host_key,
            find_user=lambda name: node.users.get(name) if node.attached else None,
            environment=lambda: self.agent.node_environment(self.context.identity(node)),
            home_dir=lambda name: layout.create_home(node.pool_id, node.id, name),
            network=self.context.network)

    async def stop_services(self, node: Node) -> None:
        await self.context.services.stop(node.key)
        self._log(node, "SSH server and NAT frontends stopped")

    def _log(self, node: Node, message: str, level: str = "INFO") -> None:
        """A line in the node's agent log (see node/agentlog.py)."""
        self.agent.log.write(node.pool_id, node.id, message, level)

    async def _start_engine(self, pool: Pool, node: Node) -> Optional[dict]:
        """Start the node's Docker engine and load the pool's containerImageNames into it, before
        the node takes tasks; the node error that makes it unusable when that fails."""
        engines = self.agent.engines
        paths = self.agent.layout.engine(pool.id, node.id)
        address = node.data.get("ipAddress", "")
        own_address = address if address.startswith("127.") and address != "127.0.0.1" else None
        try:
            await engines.start(paths, own_address, node_hostname(node))
        except EngineError as exc:
            logger.error("the Docker engine of node %s did not start: %s", node.id, exc)
            return _engine_unavailable(str(exc))
        self._log(node, "Docker engine started")
        for image in container_configuration(pool).get("containerImageNames") or []:
            try:
                await engines.provide_image(paths, image)
            except OSError as exc:  # the docker client could not run
                return _engine_unavailable(f"the docker client failed: {exc}")
            except ImageUnavailable as exc:
                return {"code": "ContainerInvalidImage",
                        "message": "One or more container images specified are invalid",
                        "errorDetails": [{"name": "ContainerImage", "value": image},
                                         {"name": "Message", "value": str(exc)}]}
        return None

    async def stop_engine(self, node: Node) -> None:
        """Stop the node's engine, if it has one; its data stays with the node."""
        if self.agent.engines is not None:
            paths = self.agent.layout.engine(node.pool_id, node.id)
            running = self.agent.engines.running(paths)
            await self.agent.engines.stop(paths)
            if running:
                self._log(node, "Docker engine stopped")

    # ---- mounted blob containers (see node/blobmount/) -------------------------------------------------
    async def mount_file_systems(self, pool: Pool, node: Node, generation: int) -> Optional[dict]:
        """Mount the pool's blob containers on the node; the node error when one cannot be mounted."""
        try:
            mounts = pool_mounts(pool, self.context.storage_endpoint)
            await self.context.mounts.mount_node(
                node.key, pool.id, node.id, mounts, generation,
                still_wanted=lambda: generation == node.boot_generation and node.attached,
                on_lost=lambda path, reason: self._mount_lost(node, generation, path, reason),
                environment={name: value for name, value in self.context.node_environment(pool.id, node.id).items()
                             if name in HELPER_VARIABLES})
        except MountError as exc:
            return mount_error(exc.path, exc.message)
        self._log(node, f"{len(mounts)} blob container(s) mounted under fsmounts/")
        return None

    async def unmount_file_systems(self, node: Node) -> None:
        await self.context.mounts.unmount_node(node.key)

    def _mount_lost(self, node: Node, generation: int, path: str, reason: str) -> None:
        """A mount helper died: the node cannot serve its tasks the mount any more."""
        if generation != node.boot_generation or not node.attached or node.state not in ("idle", "running"):
            return
        self.tasks.evict(node, "requeue")
        node.data["errors"] = [mount_error(path, reason)]
        node.set_state("unusable")

    async def mount_file_systems_of_running_nodes(self) -> None:
        """At start-up, before the first answer: a node that was up mounts its containers again
        (one still booting mounts them as it boots); one that cannot becomes unusable."""
        async def remount(pool: Pool, node: Node) -> None:
            error = await self.mount_file_systems(pool, node, node.boot_generation)
            if error is not None and node.state in ("idle", "running"):
                node.data["errors"] = [error]
                node.set_state("unusable")
        await asyncio.gather(*(remount(pool, node) for pool in list(self.repo.pools.values())
                               if pool.state != "deleting" and pool.data.get("mountConfiguration")
                               and not has_identity_mounts(pool)
                               for node in list(pool.nodes.values())
                               if node.state in ("idle", "running", "starttaskfailed")))

    def _ready(self, node: Node) -> None:
        node.set_state("running" if node.running else "idle")
        self.context.kick(node.pool_id)

    async def _run_start_task(self, node: Node, start_task: dict, generation: int) -> bool:
        max_retries = start_task.get("maxTaskRetryCount", 0)
        paths = self.agent.layout.startup(node.pool_id, node.id)
        env = self.agent.environment(self.context.identity(node), paths, start_task.get("environmentSettings") or [])
        container = None
        if start_task.get("containerSettings"):
            container = ContainerRun.from_settings(self.agent.layout.engine(node.pool_id, node.id),
                                                   start_task["containerSettings"])
        node.data["startTaskInfo"] = {"state": "running", "startTime": wire.now_iso(), "retryCount": 0}
        while True:
            await self.context.store.durable()  # on record as running before it runs
            outcome = await self.agent.run_program(
                _start_task_key(node), start_task["commandLine"], start_task.get("resourceFiles") or [], paths, env,
                None, on_start=lambda pid: setattr(node, "start_task_pid", pid), container=container,
                on_container=lambda info: self._start_task_container_started(node, generation, info),
                storage=self.context.identity(node).storage)
            node.start_task_pid = None
            if generation != node.boot_generation:
                return False
            if outcome.stop_reason == "agent_restart":
                continue  # the node agent restarted: run it again, as a reboot would
            info = node.data["startTaskInfo"]
            outcome.apply_to(info)
            if outcome.succeeded or (max_retries != -1 and info["retryCount"] >= max_retries):
                info["state"] = "completed"
                return outcome.succeeded
            info["retryCount"] += 1
            info["lastRetryTime"] = info["startTime"] = wire.now_iso()

    @staticmethod
    def _start_task_container_started(node: Node, generation: int, container_info: dict) -> None:
        if generation == node.boot_generation and node.attached and "startTaskInfo" in node.data:
            node.data["startTaskInfo"]["containerInfo"] = container_info

    # ---- reboot, reimage, scheduling --------------------------------------------------------------
    def reboot_node(self, pool_id: str, node_id: str, option: str = "requeue") -> Node:
        return self._restart(pool_id, node_id, option, "reboot")

    def reimage_node(self, pool_id: str, node_id: str, option: str = "requeue") -> Node:
        return self._restart(pool_id, node_id, option, "reimage")

    def _restart(self, pool_id: str, node_id: str, option: str, action: str) -> Node:
        """Reboot (keep the disk) or reimage (a fresh disk); the start task runs again either way."""
        pool = self.repo.get_pool(pool_id)
        node = self.repo.get_node(pool_id, node_id)
        if node.state not in RESTARTABLE_STATES:
            raise BatchServiceError("NodeNotReady", f"The node is {node.state} and cannot be {action}ed now.")
        if self._defer_until_tasks_end(node, option, action):
            return node
        self.tasks.evict(node, option)
        self.on_node_restarted(node, action)
        if action == "reimage":
            node.users = {}  # they lived on the OS disk that a reimage reinstalls (their homes go with the disk)
        node.boot_generation += 1
        self.agent.stop(_start_task_key(node), "shutdown")
        node.set_state("rebooting" if action == "reboot" else "reimaging")
        self.context.background.spawn(self._boot(pool, node, restart=action))
        return node

    def _defer_until_tasks_end(self, node: Node, option: str, action: str) -> bool:
        """For taskcompletion/retaineddata: do `action` once the node's tasks end. True when deferred."""
        if option not in ("taskcompletion", "retaineddata") or not node.running:
            return False
        node.after_tasks = action  # the scheduler gives the node nothing new meanwhile
        return True

    def _run_deferred_action(self, node: Node) -> None:
        """The node's last task ended: do what was deferred until then."""
        action = node.after_tasks
        if not action:
            return
        node.after_tasks = None
        pool = self.repo.pool_of(node)
        if pool is None:
            return
        if action == "remove":
            self.remove_node(pool, node, "requeue")
        else:
            self._restart(pool.id, node.id, "requeue", action)

    def disable_node_scheduling(self, pool_id: str, node_id: str, option: str = "requeue") -> Node:
        node = self.repo.get_node(pool_id, node_id)
        if option in ("requeue", "terminate"):
            self.tasks.evict(node, option, node_stops=False)
        node.data["schedulingState"] = "disabled"
        return node

    def enable_node_scheduling(self, pool_id: str, node_id: str) -> Node:
        node = self.repo.get_node(pool_id, node_id)
        node.data["schedulingState"] = "enabled"
        self.context.kick(pool_id)
        return node

    # ---- node users and remote login -------------------------------------------------------------
    def create_node_user(self, pool_id: str, node_id: str, body: dict) -> None:
        node = self.repo.get_node(pool_id, node_id)
        if body["name"] in node.users:
            raise BatchServiceError("NodeUserExists")
        node.users[body["name"]] = user_record(body)

    def replace_node_user(self, pool_id: str, node_id: str, name: str, body: dict) -> None:
        node = self.repo.get_node(pool_id, node_id)
        if name not in node.users:
            raise BatchServiceError("NodeUserNotFound")
        node.users[name] = user_record({**body, "name": name, "isAdmin": node.users[name]["isAdmin"]})

    def delete_node_user(self, pool_id: str, node_id: str, name: str) -> None:
        node = self.repo.get_node(pool_id, node_id)
        if node.users.pop(name, None) is None:
            raise BatchServiceError("NodeUserNotFound")

    def get_node_remote_login_settings(self, pool_id: str, node_id: str) -> dict:
        """Where SSH to the node lands (see endpoints.remote_login_settings)."""
        return remote_login_settings(self.repo.get_node(pool_id, node_id))

    def node_files_root(self, pool_id: str, node_id: str) -> str:
        node = self.repo.get_node(pool_id, node_id)
        return self.agent.layout.root(node.pool_id, node.id)

    # ---- start-up --------------------------------------------------------------------------------------
    def recover(self) -> None:
        """At start-up: the nodes hold their addresses and ports again; kill a start task the last
        run left behind; no task runs on a node yet."""
        for pool in self.repo.pools.values():
            for node in pool.nodes.values():
                self._log(node, "the node agent starts again: localbatch restarted")
                self.context.network.claim(node.data.get("ipAddress"), frontend_ports(node))
                if node.start_task_pid:  # the emulator stopped without ending it (a crash)
                    processes.kill_leftover_process_group(
                        node.start_task_pid, self.agent.layout.startup(pool.id, node.id).working_dir)
                    node.start_task_pid = None
                node.running.clear()
                node.record_slots()
                if node.state == "running":
                    node.set_state("idle")
                if node.state == "idle" and (container_configuration(pool) is not None or has_identity_mounts(pool)):
                    # Its engine stopped with the emulator: the node boots again, engine and all. So
                    # does a node mounting through its identity, whose endpoint is up only once
                    # localbatch listens (other mounts are made again before that, below).
                    node.boot_generation += 1
                    node.set_state("rebooting")

    async def start_services_of_running_nodes(self) -> None:
        """At start-up, before the first answer: a node that was up is up again, SSH and frontends
        included (one still booting starts them when it has booted)."""
        for pool in list(self.repo.pools.values()):
            if pool.state == "deleting":
                continue
            for node in list(pool.nodes.values()):
                if node.state not in BOOTING_STATES and node.state != "leavingpool":
                    await self.start_services(pool, node)

    def resume(self, pool: Pool) -> None:
        """Once the loop runs: carry on with the boots, removals and deferred actions in flight."""
        for node in list(pool.nodes.values()):
            if node.state in BOOTING_STATES:
                self.context.background.spawn(self._boot(pool, node, restart="resume"))
                continue
            if node.state == "leavingpool":
                self.context.background.spawn(self._finish_removal(pool, node))
            elif node.after_tasks:  # its tasks were requeued when the emulator stopped
                self._run_deferred_action(node)


def count_current_nodes(pool: Pool) -> None:
    pool.data["currentDedicatedNodes"] = count_nodes(pool, dedicated=True)
    pool.data["currentLowPriorityNodes"] = count_nodes(pool, dedicated=False)


def count_nodes(pool: Pool, dedicated: bool) -> int:
    return sum(1 for n in pool.nodes.values() if n.is_dedicated == dedicated and n.state != "leavingpool")


def node_counts(pools: list[Pool]) -> list[dict]:
    """Per pool, how many dedicated and low-priority nodes are in each state."""
    result = []
    for pool in sorted(pools, key=lambda p: p.id):
        dedicated = dict.fromkeys(NODE_COUNT_NAMES, 0)
        low_priority = dict.fromkeys(NODE_COUNT_NAMES, 0)
        for node in pool.nodes.values():
            counters = dedicated if node.is_dedicated else low_priority
            counters[next((n for n in NODE_COUNT_NAMES if n.lower() == node.state), "unknown")] += 1
            counters["total"] += 1
        result.append({"poolId": pool.id, "dedicated": dedicated, "lowPriority": low_priority})
    return result


def _engine_unavailable(message: str) -> dict:
    """The node error of a node whose Docker engine cannot be used (the emulator's fault)."""
    return {"code": "ContainerEngineUnavailable", "message": "The node's Docker engine could not be started",
            "errorDetails": [{"name": "Message", "value": message}]}


def node_hostname(node: Node) -> str:
    """The node's host name, as its Docker engine (and so its swarm) reports it: distinct per
    node, like the host names of a pool's VMs."""
    return "tvmps-" + node.id.split("_")[1][:12]


def _start_task_key(node: Node) -> str:
    return f"start:{node.key}"
