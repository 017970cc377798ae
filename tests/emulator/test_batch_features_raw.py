"""Bodies the SDK would never send for the features of preparation and release tasks, exit
conditions, dependencies and output files: incomplete or mistyped parts get a 400 naming what is
wrong, never a 500."""
from __future__ import annotations

import pytest

from .support import create_job


@pytest.mark.parametrize("task, missing", [
    ({"exitConditions": {"exitCodeRanges": [{"start": 1, "exitOptions": {}}]}}, "end"),
    ({"exitConditions": {"exitCodes": [{"exitOptions": {"jobAction": "none"}}]}}, "code"),
    ({"dependsOn": {"taskIdRanges": [{"start": 1}]}}, "end"),
    ({"outputFiles": [{"filePattern": "*.txt", "uploadOptions": {"uploadCondition": "tasksuccess"}}]}, "destination"),
    ({"outputFiles": [{"filePattern": "*.txt", "destination": {"container": {}},
                       "uploadOptions": {"uploadCondition": "tasksuccess"}}]}, "containerUrl"),
], ids=["range-without-end", "exit-code-without-code", "id-range-without-end", "no-destination", "no-container-url"])
def test_incomplete_parts_are_refused_naming_them(raw, client, pool_id, task, missing):
    job_id = create_job(client, pool_id, uses_task_dependencies=True)
    response = raw.request("POST", f"/jobs/{job_id}/tasks", body={"id": "t", "commandLine": "/bin/true", **task})
    assert response.status == 400, response.json()
    assert missing in (response.detail("PropertyName") or response.detail("Reason") or "")


@pytest.mark.parametrize("job, name", [
    ({"jobPreparationTask": {}}, "commandLine"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "id": "bad id"}}, "jobPreparationTask.id"),
    ({"jobPreparationTask": {"commandLine": "/bin/true", "constraints": {"maxWallClockTime": "soon"}}},
     "maxWallClockTime"),
], ids=["no-command-line", "bad-id", "bad-duration"])
def test_bad_preparation_tasks_are_refused_naming_them(raw, pool_id, job, name):
    response = raw.request("POST", "/jobs", body={"id": "prep-raw", "poolInfo": {"poolId": pool_id}, **job})
    assert response.status == 400, response.json()
    assert name in (response.detail("PropertyName") or response.detail("Reason") or "")
