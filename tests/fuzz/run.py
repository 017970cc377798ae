"""Fuzz localbatch with schemathesis, driven by the description tests/fuzz/openapi.py generates.

Each operation is fuzzed twice: with generated path parameters (mostly ids that do not exist) and
with the ids of a small seeded world (a pool with a node and a user, a job with a completed task
and its files, a job schedule), so that bodies reach the domain and not only the 404 path.
Generation is derandomized (Hypothesis's fixed seed, no example database), so a run sends the
same requests each time. Requests are signed with Shared Key as azure-batch signs them
(tests/emulator/support.py's signer). Findings are collected, not raised, so one run reports
them all:
- a server error: any 5xx other than 501 FeatureNotEmulated;
- a schema violation: a status code the operation does not declare, a content type or a body
  that does not conform to the generated description (for 4XX: the Batch error body).
"""
from __future__ import annotations

import email.utils
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from localbatch import WELL_KNOWN_ACCOUNT_KEY, WELL_KNOWN_ACCOUNT_NAME, LocalBatchServer
from tests.emulator.support import (batch_client, create_job, create_pool_and_wait, pool_options, run_task,
                                    shared_key_signature, unique_id)
from tests.fuzz.openapi import build_description

from azure.batch import models

FINDINGS_SHOWN = 20


class SharedKeyAuth(requests.auth.AuthBase):
    """Signs a prepared request as azure-batch's BatchSharedKeyAuthPolicy does, at the moment it is sent."""

    def __init__(self, account: str = WELL_KNOWN_ACCOUNT_NAME, key: str = WELL_KNOWN_ACCOUNT_KEY):
        self.account, self.key = account, key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["ocp-date"] = email.utils.formatdate(usegmt=True)
        request.headers["client-request-id"] = str(uuid.uuid4())
        parts = urlsplit(request.url)
        signature = shared_key_signature(self.key, request.method, parts.path, parts.query,
                                         dict(request.headers), self.account)
        request.headers["Authorization"] = f"SharedKey {self.account}:{signature}"
        return request


@dataclass
class Finding:
    operation: str
    kind: str            # "server error" or "schema violation"
    request: str
    status: int
    detail: str


@dataclass
class FuzzReport:
    operations: set[str] = field(default_factory=set)
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    @property
    def server_errors(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.kind == "server error"]

    @property
    def schema_violations(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.kind == "schema violation"]

    def summary(self) -> str:
        lines = [f"operations covered: {len(self.operations)}",
                 f"requests sent: {self.requests}",
                 "status histogram: " + ", ".join(f"{status}: {count}" for status, count in
                                                  sorted(self.statuses.items(), key=lambda item: str(item[0]))),
                 f"server errors (5xx other than 501): {len(self.server_errors)}",
                 f"schema violations: {len(self.schema_violations)}"]
        for finding in self.findings[:FINDINGS_SHOWN]:
            lines.append(f"- {finding.kind}: {finding.operation} {finding.request} -> {finding.status}: "
                         f"{finding.detail[:400]}")
        if len(self.findings) > FINDINGS_SHOWN:
            lines.append(f"- ... and {len(self.findings) - FINDINGS_SHOWN} more")
        return "\n".join(lines)


def seed_world(url: str) -> dict[str, str]:
    """Resources the fixed-id pass addresses: their ids as path parameters."""
    with batch_client(url) as client:
        pool_id = unique_id("fuzzpool")
        node = create_pool_and_wait(client, pool_id, nodes=1)[0]
        user_name = "fuzzuser"
        client.create_node_user(pool_id, node.id, models.BatchNodeUserCreateOptions(name=user_name, password="Fuzz-1234"))
        job_id = create_job(client, pool_id)
        task_id = run_task(client, job_id, "/bin/sh -c 'echo fuzz'").id
        schedule_id = unique_id("fuzzschedule")
        client.create_job_schedule(models.BatchJobScheduleCreateOptions(
            id=schedule_id, schedule=models.BatchJobScheduleConfiguration(),
            job_specification=models.BatchJobSpecification(pool_info=models.BatchPoolInfo(pool_id=pool_id))))
    return {"poolId": pool_id, "nodeId": node.id, "userName": user_name, "jobId": job_id, "taskId": task_id,
            "filePath": "stdout.txt", "jobScheduleId": schedule_id, "extensionName": "none",
            "applicationId": "none"}


class Fuzzer:
    def __init__(self, url: str, report: Optional[FuzzReport] = None):
        self.url = url
        self.report = report or FuzzReport()
        self.session = requests.Session()
        self.session.auth = SharedKeyAuth()
        self.schema = schemathesis.openapi.from_dict(build_description())

    def operations(self, names: Optional[Iterable[str]] = None) -> list[Any]:
        """The schema's operations (those named, when names are given), deletions last."""
        wanted = set(names) if names is not None else None
        found = [result.ok() for result in self.schema.get_all_operations()]
        found = [operation for operation in found
                 if wanted is None or operation.definition.raw["operationId"] in wanted]
        return sorted(found, key=lambda operation: operation.method.upper() == "DELETE")

    def fuzz(self, operation: Any, examples: int, mode: GenerationMode,
             path_parameters: Optional[dict[str, str]] = None) -> None:
        name = operation.definition.raw["operationId"]
        wanted = {parameter.name for parameter in operation.path_parameters}
        fixed = {key: value for key, value in (path_parameters or {}).items() if key in wanted} or None
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)

        @hypothesis.settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                             phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                             verbosity=hypothesis.Verbosity.quiet)
        @hypothesis.given(strategy)
        def send(case: schemathesis.Case) -> None:
            self.send(name, case)

        self.report.operations.add(name)
        send()

    def send(self, name: str, case: schemathesis.Case) -> None:
        request = f"{case.method.upper()} {case.formatted_path} query={case.query} headers={case.headers}"
        # Each request on a fresh connection: schemathesis re-sends a request once when a reused connection
        # drops it unanswered, which would hide a server that breaks off an answer.
        self.session.close()
        try:
            response = case.call(base_url=self.url, session=self.session, timeout=60)
        except requests.exceptions.InvalidHeader:
            return   # requests refuses to send such a header: nothing reached the server
        except requests.exceptions.ConnectionError as error:   # the server dropped the request unanswered
            self.report.requests += 1
            self.report.statuses["no answer"] += 1
            self.report.findings.append(Finding(name, "server error", request, 0, str(error)))
            return
        self.judge(name, case, request, response)

    def judge(self, name: str, case: schemathesis.Case, request: str, response: Any) -> None:
        """Count an answer, and record it as a finding when it is a server error or breaks the description."""
        self.report.requests += 1
        self.report.statuses[response.status_code] += 1
        if response.status_code >= 500 and response.status_code != 501:
            self.report.findings.append(Finding(name, "server error", request, response.status_code,
                                                response.content[:400].decode("utf-8", "replace")))
        try:
            case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                                     response_schema_conformance])
        except (AssertionError, BaseExceptionGroup) as failure:  # schemathesis's failures, grouped
            self.report.findings.append(Finding(name, "schema violation", request, response.status_code,
                                                " ".join(str(failure).split())))

    def run(self, examples: int, modes: Iterable[GenerationMode], names: Optional[Iterable[str]] = None,
            path_parameters: Optional[dict[str, str]] = None) -> FuzzReport:
        """Each operation with generated ids, then (when given) with the seeded world's ids."""
        operations = self.operations(names)
        for mode in modes:
            for operation in operations:
                self.fuzz(operation, examples, mode)
            if path_parameters:
                for operation in operations:
                    self.fuzz(operation, examples, mode, path_parameters)
        return self.report


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="examples per operation, mode and pass")
    parser.add_argument("--operation", action="append", help="only this operationId (repeatable)")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="localbatch-fuzz-") as location:
        with LocalBatchServer(location) as server:
            fuzzer = Fuzzer(server.url)
            report = fuzzer.run(arguments.examples, [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                arguments.operation, seed_world(server.url))
    print(report.summary())
    return 1 if report.findings else 0
