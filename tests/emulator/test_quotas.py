"""Core quotas: a pool may ask for any number of nodes; allocation stops at the account's quota
and the pool reports why, as on Azure (it never hangs the emulator)."""
from __future__ import annotations

from typing import Iterator

import pytest
from azure.batch import BatchClient, models

from localbatch import LocalBatchServer
from localbatch.domain.quotas import Quotas

from .conftest import fast_timings
from .support import LRO_POLLING, batch_client, pool_options, unique_id, wait_for, wait_for_nodes

# standard_d2s_v3 has 2 cores: room for 4 dedicated nodes and 1 low-priority node.
QUOTAS = Quotas(dedicated_cores=8, low_priority_cores=2)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchClient]:
    location = tmp_path_factory.mktemp("localbatch-quotas")
    with LocalBatchServer(str(location), timings=fast_timings(), quotas=QUOTAS) as server:
        with batch_client(server.url) as batch:
            yield batch


def _steady(client: BatchClient, pool_id: str) -> models.BatchPool:
    return wait_for(lambda: (p := client.get_pool(pool_id)).allocation_state == "steady" and p,
                    f"pool {pool_id} to be steady")


def test_a_pool_asking_for_more_nodes_than_the_quota_gets_what_fits_and_a_resize_error(client):
    greedy = unique_id("greedy")
    client.create_pool(pool_options(greedy, nodes=2_147_483_647, target_low_priority_nodes=5))
    pool = _steady(client, greedy)
    assert (pool.current_dedicated_nodes, pool.current_low_priority_nodes) == (4, 1)
    assert pool.target_dedicated_nodes == 2_147_483_647
    assert sorted(error.code for error in pool.resize_errors) == [
        "AccountCoreQuotaReached", "AccountLowPriorityCoreQuotaReached"]
    assert len(wait_for_nodes(client, greedy, 5)) == 5

    # The quota is the account's: a second pool gets nothing until the first one shrinks.
    second = unique_id("second")
    client.create_pool(pool_options(second, nodes=1))
    starved = _steady(client, second)
    assert starved.current_dedicated_nodes == 0
    assert [error.code for error in starved.resize_errors] == ["AccountCoreQuotaReached"]

    client.begin_resize_pool(greedy, models.BatchPoolResizeOptions(target_dedicated_nodes=1,
                                                                   target_low_priority_nodes=0),
                             polling_interval=LRO_POLLING).result()
    shrunk = _steady(client, greedy)
    assert shrunk.current_dedicated_nodes == 1 and not shrunk.resize_errors
    client.begin_resize_pool(second, models.BatchPoolResizeOptions(target_dedicated_nodes=1),
                             polling_interval=LRO_POLLING).result()
    grown = _steady(client, second)
    assert grown.current_dedicated_nodes == 1 and not grown.resize_errors
