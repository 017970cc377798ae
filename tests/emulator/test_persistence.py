"""Restart persistence: stop a server, start a new one on the same location, and find
pools, nodes, jobs, tasks, their outputs and node users as they were; work that was in flight
(running tasks, deletions, terminations, booting nodes) carries on."""
from __future__ import annotations

import os

import pytest
from azure.batch import models
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from localbatch import LocalBatchServer, Timings

from .conftest import fast_timings
from .support import (LRO_POLLING, batch_client, create_job, create_pool_and_wait, pool_options, read_task_file,
                      run_task, terminate_options, wait_for, wait_for_nodes, wait_for_task)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (it only waits for its parent to reap it).
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(") ", 1)[1][0] != "Z"


def test_everything_survives_a_restart_and_a_running_task_runs_again(tmp_path):
    location = tmp_path / "state"
    marks = tmp_path / "marks"
    marks.mkdir()
    first = LocalBatchServer(str(location), timings=fast_timings()).start()
    try:
        with batch_client(first.url) as client:
            nodes = create_pool_and_wait(client, "kept-pool", nodes=2, metadata=[
                models.BatchMetadataItem(name="k", value="v")],
                start_task=models.BatchStartTask(command_line="/bin/echo started"))
            job_id = create_job(client, "kept-pool", "kept-job")
            done = run_task(client, job_id, "/bin/echo kept output", task_id="done")
            failed = run_task(client, job_id, "/bin/bash -c 'exit 4'", task_id="failed")
            client.create_node_user("kept-pool", nodes[0].id, models.BatchNodeUserCreateOptions(
                name="keeper", password="P4ssw0rd!"))
            # Runs once until the server stops; on its second run it finds the mark and succeeds.
            client.create_task(job_id, models.BatchTaskCreateOptions(
                id="interrupted",
                command_line=(f"/bin/bash -c 'if [ -e {marks}/first ]; then echo second run; exit 0; fi; "
                              f"echo $$ > {marks}/pid; touch {marks}/first; exec sleep 60'")))
            wait_for(lambda: (marks / "pid").exists() and (marks / "pid").read_text().strip(),
                     "the interrupted task to start")
            pid = int((marks / "pid").read_text())
            assert client.get_task(job_id, "interrupted").state == "running"
    finally:
        first.stop()
    assert not _process_alive(pid), "stopping the server must end the task's process"

    with LocalBatchServer(str(location), timings=fast_timings()) as second:
        assert second.url != "" and second.port > 0
        with batch_client(second.url) as client:
            pool = client.get_pool("kept-pool")
            assert pool.state == "active" and pool.allocation_state == "steady"
            assert [(m.name, m.value) for m in pool.metadata] == [("k", "v")]
            assert pool.start_task.command_line == "/bin/echo started"
            restarted = wait_for_nodes(client, "kept-pool", 2, states=("idle", "running"))
            assert {n.id for n in restarted} == {n.id for n in nodes}
            assert {n.ip_address for n in restarted} == {n.ip_address for n in nodes}

            job = client.get_job("kept-job")
            assert job.state == "active" and job.pool_info.pool_id == "kept-pool"
            kept = client.get_task(job_id, "done")
            assert kept.state == "completed" and kept.execution_info.exit_code == 0
            assert kept.etag == done.etag
            assert read_task_file(client, job_id, "done") == "kept output\n"
            assert client.get_task(job_id, "failed").execution_info.exit_code == failed.execution_info.exit_code
            node_root_files = {f.name for f in client.list_node_files("kept-pool", nodes[0].id, recursive=True)}
            assert "startup/stdout.txt" in node_root_files

            with pytest.raises(ResourceExistsError) as caught:
                client.create_node_user("kept-pool", nodes[0].id, models.BatchNodeUserCreateOptions(
                    name="keeper", password="x"))
            assert caught.value.error.code == "NodeUserExists"
            client.replace_node_user("kept-pool", nodes[0].id, "keeper",
                                     models.BatchNodeUserReplaceOptions(password="N3w-pass!"))

            again = wait_for_task(client, job_id, "interrupted")
            assert again.execution_info.requeue_count == 1
            assert again.execution_info.exit_code == 0
            assert read_task_file(client, job_id, "interrupted") == "second run\n"
            counts = client.get_job_task_counts(job_id)
            assert (counts.task_counts.completed, counts.task_counts.succeeded, counts.task_counts.failed) == (3, 2, 1)


def test_work_in_flight_at_stop_finishes_after_restart(tmp_path):
    location = str(tmp_path / "state")
    slow = Timings(node_creating=60, node_starting=60, pool_deleting=60, node_leaving=60,
                   job_terminating=60, job_deleting=60, node_rebooting=60)
    with LocalBatchServer(location, timings=fast_timings()) as first:
        with batch_client(first.url) as client:
            create_pool_and_wait(client, "doomed-pool", nodes=1)
            create_job(client, "doomed-pool", "ending-job")
            create_job(client, "doomed-pool", "deleted-job")
    # The same state, served with slow timings, so each step is caught half-way.
    with LocalBatchServer(location, timings=slow) as stalled:
        with batch_client(stalled.url) as client:
            client.begin_terminate_job("ending-job", options=terminate_options("halfway"), polling_interval=LRO_POLLING)
            client.begin_delete_job("deleted-job", polling_interval=LRO_POLLING)
            client.begin_delete_pool("doomed-pool", polling_interval=LRO_POLLING)
            client.create_pool(pool_options("booting-pool", nodes=1))
            assert client.get_job("ending-job").state == "terminating"
            assert client.get_job("deleted-job").state == "deleting"
            assert client.get_pool("doomed-pool").state == "deleting"
            assert [n.state for n in client.list_nodes("booting-pool")] == ["creating"]

    with LocalBatchServer(location, timings=fast_timings()) as resumed:
        with batch_client(resumed.url) as client:
            ended = wait_for(lambda: (j := client.get_job("ending-job")).state == "completed" and j,
                             "the termination to finish")
            assert ended.execution_info.termination_reason == "halfway"
            wait_for(lambda: "deleted-job" not in [j.id for j in client.list_jobs()], "the job deletion to finish")
            wait_for(lambda: "doomed-pool" not in [p.id for p in client.list_pools()], "the pool deletion to finish")
            with pytest.raises(ResourceNotFoundError):
                client.get_pool("doomed-pool")
            wait_for_nodes(client, "booting-pool", 1, states=("idle",))
            wait_for(lambda: client.get_pool("booting-pool").allocation_state == "steady", "allocation to finish")


def test_state_is_kept_per_location(tmp_path):
    with LocalBatchServer(str(tmp_path / "one"), timings=fast_timings()) as one:
        with batch_client(one.url) as client:
            client.create_pool(pool_options("only-in-one", nodes=0))
    with LocalBatchServer(str(tmp_path / "two"), timings=fast_timings()) as two:
        with batch_client(two.url) as client:
            assert list(client.list_pools()) == []
    with LocalBatchServer(str(tmp_path / "one"), timings=fast_timings()) as one_again:
        with batch_client(one_again.url) as client:
            assert [p.id for p in client.list_pools()] == ["only-in-one"]


def test_what_was_deleted_stays_deleted_after_a_restart(tmp_path):
    location = str(tmp_path / "state")
    started = tmp_path / "started"
    with LocalBatchServer(location, timings=fast_timings()) as first:
        with batch_client(first.url) as client:
            create_pool_and_wait(client, "p", nodes=1)
            job_id = create_job(client, "p", "j")
            client.create_task(job_id, models.BatchTaskCreateOptions(
                id="running-then-deleted", command_line=f"/bin/bash -c 'touch {started}; exec sleep 60'"))
            wait_for(lambda: started.exists(), "the task to start")
            client.delete_task(job_id, "running-then-deleted")
            run_task(client, job_id, "/bin/true", task_id="kept")  # time for the killed task to be reaped
            client.create_node_user("p", client.get_task(job_id, "kept").node_info.node_id,
                                    models.BatchNodeUserCreateOptions(name="gone", password="x-Y-z-1!"))
            client.delete_node_user("p", client.get_task(job_id, "kept").node_info.node_id, "gone")
            # A job deleted while a task runs, then created again under the same id, starts empty.
            create_job(client, "p", "reused")
            client.create_task("reused", models.BatchTaskCreateOptions(id="old", command_line="sleep 60"))
            wait_for_task(client, "reused", "old", states=("running",))
            client.begin_delete_job("reused", polling_interval=LRO_POLLING).result()
            create_job(client, "p", "reused")
            run_task(client, job_id, "/bin/true", task_id="kept-too")
    with LocalBatchServer(location, timings=fast_timings()) as second:
        with batch_client(second.url) as client:
            assert [t.id for t in client.list_tasks("j")] == ["kept", "kept-too"]
            assert list(client.list_tasks("reused")) == []
            with pytest.raises(ResourceNotFoundError):
                client.get_task("j", "running-then-deleted")
            node_id = client.get_task("j", "kept").node_info.node_id
            with pytest.raises(ResourceNotFoundError):
                client.delete_node_user("p", node_id, "gone")


def test_a_pool_deleted_while_its_start_task_runs_leaves_no_node_behind(tmp_path):
    location = str(tmp_path / "state")
    with LocalBatchServer(location, timings=fast_timings()) as first:
        with batch_client(first.url) as client:
            client.create_pool(pool_options("again", nodes=1, start_task=models.BatchStartTask(
                command_line="sleep 60")))
            wait_for_nodes(client, "again", 1, states=("waitingforstarttask",))
            client.begin_delete_pool("again", polling_interval=LRO_POLLING).result()
            client.create_pool(pool_options("again", nodes=0))  # the same id, no nodes
            wait_for(lambda: client.get_pool("again").allocation_state == "steady", "the new pool to settle")
    with LocalBatchServer(location, timings=fast_timings()) as second:
        with batch_client(second.url) as client:
            assert list(client.list_nodes("again")) == []
            assert client.get_pool("again").current_dedicated_nodes == 0


def test_blocked_tasks_and_preparation_status_survive_a_restart(tmp_path):
    location = tmp_path / "state"
    with LocalBatchServer(str(location), timings=fast_timings()) as first:
        with batch_client(first.url) as client:
            [node] = create_pool_and_wait(client, "deps-pool", nodes=1)
            job_id = create_job(client, "deps-pool", "deps-job", uses_task_dependencies=True,
                                job_preparation_task=models.BatchJobPreparationTask(
                                    command_line="/bin/bash -c 'echo prep >> $AZ_BATCH_NODE_SHARED_DIR/prep.txt'"))
            client.create_tasks(job_id, [
                models.BatchTaskCreateOptions(id="first", command_line="/bin/true"),
                models.BatchTaskCreateOptions(id="waits", command_line="/bin/true",
                                              depends_on=models.BatchTaskDependencies(task_ids=["later"]))])
            wait_for_task(client, job_id, "first")
    with LocalBatchServer(str(location), timings=fast_timings()) as second:
        with batch_client(second.url) as client:
            assert client.get_task(job_id, "waits").state == "active"  # still blocked
            [status] = client.list_job_preparation_and_release_task_status(job_id)
            assert (status.node_id, status.job_preparation_task_execution_info.result) == (node.id, "success")
            wait_for_nodes(client, "deps-pool", 1)
            client.create_task(job_id, models.BatchTaskCreateOptions(id="later", command_line="/bin/true"))
            assert wait_for_task(client, job_id, "waits").execution_info.result == "success"
            # The preparation task ran once: its success was remembered across the restart.
            shared = b"".join(client.download_node_file("deps-pool", node.id, "shared/prep.txt"))
            assert shared == b"prep\n"
