"""BatchService: the account's domain put together, as the handlers see it.

Handlers call the operation of the same name on `pools`, `nodes`, `jobs` or `tasks`, with
already-validated request bodies. Changes are persisted by the store on their own (see
store.py); this module only composes the parts and runs start-up and shutdown.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, Optional

from ..node.agent import NodeAgent
from ..node.blobmount.manager import BlobMounts, blob_endpoint_of
from ..node.containerimages import ImageCache
from ..node.engines import DockerEngines
from ..node.layout import NodeLayout
from ..node.network import NodeNetwork
from ..node.services import NodeServices
from ..node.resourcefiles import AutoStorage, ResourceFileDownloader
from ..store import Store
from .agentevents import AgentEvents
from .autoscale.scaler import AutoScale
from .context import DomainContext
from .entities import Job, JobSchedule, Pool
from .jobs import Jobs
from .jobschedules import JobSchedules
from .nodes import Nodes
from .pools import Pools
from .preparation import Preparations
from .quotas import Quotas
from .repository import Repository
from .runtime import Background, Clock, Timings, Transitions
from .scheduler import Scheduler
from .tasks import Tasks

logger = logging.getLogger(__name__)

# Under --location: the state database's directory, the nodes' directories, the container images.
STATE_DIRECTORY = "state"
NODES_DIRECTORY = "nodes"
IMAGES_DIRECTORY = "images"


class BatchService:
    def __init__(self, location: str, account_name: str, timings: Optional[Timings] = None,
                 auto_storage: Optional[AutoStorage] = None, quotas: Optional[Quotas] = None,
                 network: Optional[NodeNetwork] = None):
        self.location = os.path.abspath(location)
        self.account_name = account_name
        self.store = Store(os.path.join(self.location, STATE_DIRECTORY))
        self.repo = Repository(self.store)
        self.transitions = Transitions(timings or Timings())
        self.background = Background()
        self.clock = Clock(self.background)
        agent = NodeAgent(NodeLayout(os.path.join(self.location, NODES_DIRECTORY)),
                          ResourceFileDownloader(auto_storage or AutoStorage()),
                          engines=DockerEngines(ImageCache(os.path.join(self.location, IMAGES_DIRECTORY))))
        self.repo.observer = AgentEvents(agent.log, self.repo)  # state changes go to the nodes' agent logs
        self.context = DomainContext(self.repo, self.store, agent, self.transitions, self.background, account_name,
                                     quotas=quotas or Quotas(), network=network or NodeNetwork())
        self.context.services = NodeServices(self.context.network)
        self.context.mounts = BlobMounts(agent.layout)
        self.context.storage_endpoint = blob_endpoint_of((auto_storage or AutoStorage()).connection_string)
        self.tasks = Tasks(self.context)
        self.nodes = Nodes(self.context, self.tasks)
        self.pools = Pools(self.context, self.nodes, self.tasks)
        self.preparations = Preparations(self.context)
        self.tasks.prepared = self.preparations.prepared
        self.tasks.prepare = self.preparations.prepare
        self.tasks.on_node_evicted = self.preparations.stop_on_node
        self.nodes.on_node_restarted = self.preparations.node_restarted
        self.jobs = Jobs(self.context, self.pools, self.tasks, self.preparations)
        self.job_schedules = JobSchedules(self.context, self.jobs, self.clock)
        self.autoscale = AutoScale(self.context, self.pools, self.clock)
        self.scheduler = Scheduler(self.repo.find_pool, self.repo.jobs_on_pool, self.tasks.begin,
                                   self.tasks.launch, self.tasks.begin_multi_instance)
        self.context.kick = self.scheduler.kick

    @property
    def base_url(self) -> str:
        return self.context.account_url

    @base_url.setter
    def base_url(self, url: str) -> None:
        self.context.account_url = url

    # ---- what handlers read ------------------------------------------------------------------
    def all_pools(self) -> Iterator[Pool]:
        return iter(list(self.repo.pools.values()))

    def all_jobs(self) -> Iterator[Job]:
        return iter(list(self.repo.jobs.values()))

    def all_job_schedules(self) -> Iterator[JobSchedule]:
        return iter(list(self.repo.job_schedules.values()))

    # ---- lifecycle -----------------------------------------------------------------------------
    def load(self) -> None:
        """Read the saved state and bring what was in flight back to a consistent point."""
        self.repo.load()
        for job in self.repo.jobs.values():
            self.preparations.recover(job)
        self.tasks.recover()
        self.nodes.recover()
        self.store.flush()

    async def start_node_services(self) -> None:
        """Bring back the SSH servers and NAT frontends of the nodes that are up; called on the
        loop before the server answers, so a node reported idle can be reached at once."""
        await self.nodes.start_services_of_running_nodes()
        await self.nodes.mount_file_systems_of_running_nodes()

    def start_background_work(self) -> None:
        """Resume timers, node boots, deletions and scheduling; called on the loop once the server runs."""
        self.pools.resume()
        self.autoscale.resume()
        self.jobs.resume()
        self.job_schedules.resume()

    async def close(self) -> None:
        await self.background.close()  # the scheduler starts nothing more
        try:
            await self.context.services.close()  # nothing is left listening
        except Exception:  # pylint: disable=broad-except
            logger.exception("stopping the nodes' SSH servers and NAT frontends failed")
        try:
            await self.context.mounts.close()  # nothing is left mounted
        except Exception:  # pylint: disable=broad-except
            logger.exception("unmounting the nodes' blob containers failed")
        try:
            await self.context.agent.close()
            if self.context.agent.engines is not None:
                await self.context.agent.engines.close()
        finally:
            self.store.close()  # whatever happened to the processes, the state is saved
