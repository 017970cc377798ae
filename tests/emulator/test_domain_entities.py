"""The domain's own guarantees, below the API: state tables and self-persisting entities."""
from __future__ import annotations

import pytest

from localbatch.domain import states
from localbatch.domain.entities import Job, Node, Task
from localbatch.domain.repository import Repository
from localbatch.store import Store
from localbatch.domain.states import IllegalTransition


class RecordingTracker:
    def __init__(self) -> None:
        self.marked: list[str] = []

    def mark(self, entity) -> None:
        self.marked.append(entity.key)


def _task(state: str = "active") -> Task:
    return Task("job", {"id": "t", "state": state, "stateTransitionTime": "2026-01-01T00:00:00Z",
                        "executionInfo": {"retryCount": 0, "requeueCount": 0}})


@pytest.mark.parametrize("machine", [states.POOL, states.POOL_ALLOCATION, states.NODE, states.JOB, states.TASK])
def test_every_target_state_of_a_table_is_a_state_of_that_table(machine):
    for targets in machine.transitions.values():
        assert targets <= machine.states()


def test_an_illegal_transition_raises_and_changes_nothing():
    task = _task("completed")
    with pytest.raises(IllegalTransition, match="task: completed -> running"):
        task.set_state("running")
    assert task.state == "completed"


def test_a_legal_transition_keeps_the_previous_state_and_a_new_etag():
    task = _task("active")
    task.set_state("running")
    assert (task.state, task.data["previousState"]) == ("running", "active")
    assert task.data["eTag"].startswith("0x")


def test_changes_anywhere_in_an_attached_entity_are_marked():
    tracker = RecordingTracker()
    task = _task()
    task.attach(tracker)
    tracker.marked.clear()
    task.execution_info["requeueCount"] += 1          # nested wire data
    task.pid = 42                                     # bookkeeping
    task.data["nodeInfo"] = {"poolId": "p"}
    task.data["nodeInfo"]["nodeId"] = "n"             # a dict assigned later is tracked too
    assert tracker.marked == ["job/t"] * 4


def test_a_detached_entity_and_transient_attributes_mark_nothing():
    tracker = RecordingTracker()
    job = Job({"id": "J", "state": "active", "stateTransitionTime": "2026-01-01T00:00:00Z"})
    job.attach(tracker)
    tracker.marked.clear()
    job.pending["t"] = None
    job.running_count += 1
    assert tracker.marked == []
    node = Node("p", {"id": "n", "state": "idle", "stateTransitionTime": "2026-01-01T00:00:00Z"}, 0)
    node.attach(tracker)
    node.attach(None)
    tracker.marked.clear()
    node.running["j/t"] = 1
    assert tracker.marked == []


def test_entities_read_at_start_up_are_not_written_again(tmp_path):
    store = Store(str(tmp_path))
    job = Job({"id": "J", "state": "active", "stateTransitionTime": "2026-01-01T00:00:00Z"})
    Repository(store).add_job(job)
    for n in range(3):
        Repository(store).add_task(job, Task("J", {"id": f"t{n}", "state": "active",
                                                   "stateTransitionTime": "2026-01-01T00:00:00Z"}))
    assert store.dirty and store.flush() and not store.dirty
    store.close()

    reopened = Store(str(tmp_path))
    repository = Repository(reopened)
    repository.load()
    assert sorted(repository.get_job("j").tasks) == ["t0", "t1", "t2"]
    assert not reopened.dirty, "reading the state must not queue every row to be written back"
    reopened.close()
