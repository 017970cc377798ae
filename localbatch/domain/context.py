"""What every part of the domain shares: the entities, the node agent, time, background work."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..node.agent import NodeAgent, NodeIdentity
from ..node.blobmount.manager import BlobMounts
from ..node.network import NodeNetwork
from ..node.storage_identity import NodeStorageCredential
from ..node.services import NodeServices
from ..store import Store
from .entities import Node, Pool
from .quotas import Quotas
from .repository import Repository
from .runtime import Background, Transitions


@dataclass
class DomainContext:
    repo: Repository
    store: Store
    agent: NodeAgent
    transitions: Transitions
    background: Background
    account_name: str
    account_url: str = ""  # known once the server is bound
    quotas: Quotas = field(default_factory=Quotas)
    network: NodeNetwork = field(default_factory=NodeNetwork)
    services: Optional[NodeServices] = None  # the nodes' SSH servers and NAT frontends
    mounts: Optional[BlobMounts] = None      # the nodes' mounted blob containers
    storage_endpoint: str = ""               # the blob endpoint beside which mounted accounts are found
    # Set once the scheduler exists (it needs the task runner, which needs this context).
    kick: Callable[[Optional[str]], None] = field(default=lambda pool_id: None)
    # (pool id, node id) -> variables the node gives its programs (its managed identity endpoint).
    node_environment: Callable[[str, str], dict[str, str]] = field(default=lambda pool_id, node_id: {})
    # (pool id, node id) -> how Batch reaches Storage on that node as one of its pool's identities.
    node_storage: Callable[[str, str], Optional[NodeStorageCredential]] = field(default=lambda pool_id, node_id: None)

    def identity(self, node: Node) -> NodeIdentity:
        pool = self.repo.find_pool(node.pool_id)
        docker_host = None
        if pool is not None and container_configuration(pool) is not None:
            docker_host = self.agent.layout.engine(node.pool_id, node.id).docker_host
        return NodeIdentity(self.account_name, self.account_url, node.pool_id, node.id, node.is_dedicated,
                            environment=self.node_environment(node.pool_id, node.id), docker_host=docker_host,
                            storage=self.node_storage(node.pool_id, node.id))


def container_configuration(pool: Pool) -> Optional[dict]:
    """The pool's containerConfiguration: its nodes run a Docker engine each."""
    return (pool.data.get("virtualMachineConfiguration") or {}).get("containerConfiguration") or None
