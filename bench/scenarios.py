"""One function per benchmark figure; each returns a dict of measured values."""
from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from azure.batch import models
from azure.batch.aio import BatchClient as AsyncBatchClient
from azure.core.credentials import AzureNamedKeyCredential

from common import helpers
from localbatch import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME
from localbatch.accounts import AZURITE_ACCOUNT_NAME

from .emulator import REPOSITORY_ROOT, EmulatorProcess

POLL_INTERVAL_SECONDS = 0.1
WAIT_TIMEOUT = timedelta(minutes=10)


def _trivial_tasks(count: int, prefix: str = "task") -> list[models.BatchTaskCreateOptions]:
    return [models.BatchTaskCreateOptions(id=f"{prefix}{index:06d}", command_line="/bin/true")
            for index in range(count)]


def _create_pool(client, pool_id: str, nodes: int, slots: int) -> None:
    client.create_pool(models.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=nodes, task_slots_per_node=slots,
        virtual_machine_configuration=helpers.select_verified_linux_image(client, sku_prefix="22_04")))
    if nodes:
        helpers.wait_for_all_nodes_to_reach_state(client, pool_id, timedelta(minutes=2),
                                                  poll_interval_seconds=0.05)


def _requests(status: dict, operation: str) -> int:
    return status["requests"].get(operation, 0)


def task_throughput(emulator: EmulatorProcess, count: int = 2000, nodes: int = 2, slots: int = 4) -> dict:
    """(1) and (5): tasks/s through the emulator, the same processes spawned directly, and
    the REST calls the collection's wait helper made meanwhile."""
    client = emulator.client()
    _create_pool(client, "throughput", nodes, slots)
    client.create_job(models.BatchJobCreateOptions(id="throughput", pool_info=models.BatchPoolInfo(pool_id="throughput")))
    started = time.perf_counter()
    client.create_tasks("throughput", _trivial_tasks(count))
    before_wait = emulator.status()
    wait_started = time.perf_counter()
    tasks = helpers.wait_for_tasks_to_complete(client, "throughput", WAIT_TIMEOUT,
                                               poll_interval_seconds=POLL_INTERVAL_SECONDS)
    finished = time.perf_counter()
    after_wait = emulator.status()
    failed = helpers.failed_tasks(tasks)
    if len(tasks) != count or failed:
        raise RuntimeError(f"throughput run: {len(tasks)} tasks listed, {len(failed)} failed")
    emulator_rate = count / (finished - started)
    direct_rate = direct_spawn_rate(count, nodes * slots)
    list_calls = _requests(after_wait, "list_tasks") - _requests(before_wait, "list_tasks")
    all_calls = sum(after_wait["requests"].values()) - sum(before_wait["requests"].values()) - 1  # minus status
    expected_polls = 1 + int((finished - wait_started) / POLL_INTERVAL_SECONDS)
    return {
        "tasks": count, "concurrency": nodes * slots,
        "emulator_tasks_per_second": emulator_rate, "direct_tasks_per_second": direct_rate,
        "ratio": emulator_rate / direct_rate,
        "wait_seconds": finished - wait_started, "wait_list_tasks_calls": list_calls,
        "wait_all_calls": all_calls, "wait_polls_upper_bound": expected_polls + 1,
    }


def direct_spawn_rate(count: int, concurrency: int) -> float:
    """The same trivial processes started straight from Python threads, as a ceiling."""
    with tempfile.TemporaryDirectory() as directory:
        def run_one(index: int) -> None:
            with open(os.path.join(directory, f"{index}.out"), "wb") as out:
                subprocess.run(["/bin/true"], stdout=out, stderr=out, stdin=subprocess.DEVNULL, check=True)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(run_one, range(count)))
        return count / (time.perf_counter() - started)


def submission_throughput(emulator: EmulatorProcess, count: int = 10_000, concurrency: int = 8) -> dict:
    """(2): tasks accepted per second on a pool with no nodes, sync and with the aio client."""
    client = emulator.client()
    _create_pool(client, "submission", 0, 1)
    for job_id in ("submit-sync", "submit-async"):
        client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="submission")))
    started = time.perf_counter()
    client.create_tasks("submit-sync", _trivial_tasks(count))
    sync_rate = count / (time.perf_counter() - started)

    async def submit_async() -> float:
        credential = AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY)
        async with AsyncBatchClient(emulator.url, credential) as async_client:
            began = time.perf_counter()
            await async_client.create_tasks("submit-async", _trivial_tasks(count), max_concurrency=concurrency)
            return count / (time.perf_counter() - began)
    async_rate = asyncio.run(submit_async())
    counts = client.get_job_task_counts("submit-async").task_counts
    if counts.active != count:
        raise RuntimeError(f"async submission: {counts.active} of {count} tasks accepted")
    return {"tasks": count, "sync_tasks_per_second": sync_rate, "async_tasks_per_second": async_rate,
            "async_concurrency": concurrency, "best_tasks_per_second": max(sync_rate, async_rate)}


def api_latency(emulator: EmulatorProcess, calls: int = 5000, clients: int = 8) -> dict:
    """(3): get_task latency percentiles with several client processes calling at once.

    Each client is its own process (a thread per client would measure the client's GIL,
    not the service). The emulator's own service time for the same calls is reported too.
    """
    setup = emulator.client()
    _create_pool(setup, "latency", 0, 1)
    setup.create_job(models.BatchJobCreateOptions(id="latency", pool_info=models.BatchPoolInfo(pool_id="latency")))
    setup.create_task("latency", models.BatchTaskCreateOptions(id="probe", command_line="/bin/true"))
    start_at = time.time() + 2.0  # every client starts at the same moment, after its warm-up
    with concurrent.futures.ProcessPoolExecutor(clients, mp_context=multiprocessing.get_context("spawn")) as pool:
        shares = pool.map(_latency_client, [(emulator.url, calls // clients, start_at)] * clients)
        samples = [sample for share in shares for sample in share]
    quantiles = statistics.quantiles(samples, n=100)
    service = emulator.status()["serviceTimeMs"]["get_task"]
    return {"calls": len(samples), "clients": clients,
            "p50_ms": quantiles[49] * 1000, "p99_ms": quantiles[98] * 1000,
            "service_p50_ms": service["p50"], "service_p99_ms": service["p99"]}


def _latency_client(arguments: tuple[str, int, float]) -> list[float]:
    url, share, start_at = arguments
    from azure.batch import BatchClient
    client = BatchClient(url, AzureNamedKeyCredential(WELL_KNOWN_ACCOUNT_NAME, WELL_KNOWN_ACCOUNT_KEY))
    client.get_task("latency", "probe")  # warm the connection and the SDK
    time.sleep(max(0.0, start_at - time.time()))
    samples = []
    for _ in range(share):
        began = time.perf_counter()
        client.get_task("latency", "probe")
        samples.append(time.perf_counter() - began)
    return samples


def memory_and_disk(emulator: EmulatorProcess, count: int = 10_000) -> dict:
    """(6): peak RSS and state size once `count` tasks have completed in one job."""
    client = emulator.client()
    _create_pool(client, "memory", 2, 4)
    client.create_job(models.BatchJobCreateOptions(id="memory", pool_info=models.BatchPoolInfo(pool_id="memory")))
    client.create_tasks("memory", _trivial_tasks(count), max_concurrency=4)
    helpers.wait_for_tasks_to_complete(client, "memory", WAIT_TIMEOUT, poll_interval_seconds=1.0)
    return {"completed_tasks": count, "peak_rss_mb": emulator.peak_rss_mb(),
            "state_mb": emulator.state_size_mb(), "node_directories_mb": emulator.nodes_size_mb()}


def sample_wall_time(sample: str = "sample1_helloworld.py") -> dict:
    """(4): the sample run end to end, against a running local stack (warm) and from nothing (cold)."""
    from common.local import LocalStack
    with tempfile.TemporaryDirectory(prefix="bench-sample-") as directory:
        batch_port, blob_port = _free_port(), _free_port()
        environment = {
            **os.environ,
            "BATCHSAMPLES_BATCH_ENDPOINT": f"http://127.0.0.1:{batch_port}",
            "BATCHSAMPLES_STORAGE_BLOB_ENDPOINT": f"http://127.0.0.1:{blob_port}/{AZURITE_ACCOUNT_NAME}",
            "BATCHSAMPLES_LOCAL_DATA_DIRECTORY": directory,
        }
        cold = _time_sample(sample, environment)
        stack = LocalStack(Path(directory), environment["BATCHSAMPLES_BATCH_ENDPOINT"],
                           environment["BATCHSAMPLES_STORAGE_BLOB_ENDPOINT"])
        with stack:
            _time_sample(sample, environment)  # first warm run fills caches
            warm = _time_sample(sample, environment)
    return {"sample": sample, "warm_seconds": warm, "cold_seconds": cold}


def _time_sample(sample: str, environment: dict) -> float:
    began = time.perf_counter()
    result = subprocess.run([sys.executable, sample], cwd=REPOSITORY_ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"{sample} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return elapsed


def _free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
