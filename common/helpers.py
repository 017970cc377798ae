"""Azure Batch building blocks the samples share, written to be copied into your own code.

Each function does one Batch thing with the client it is given, returns a value, and logs
(never prints, except ``print_task_output``, whose job is to print). Every wait is bounded and
raises the built-in ``TimeoutError`` naming what it waited for.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Collection, Iterable, Optional, Sequence, TextIO, TypeVar, Union

from azure.batch import BatchClient, models
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError, ServiceResponseError

from common.redaction import redact_secrets

logger = logging.getLogger(__name__)

NodeState = Union[str, models.BatchNodeState]
_T = TypeVar("_T")

CREATE_ATTEMPTS = 3
"""How many times a create helper sends its request when the answer is lost (connection reset, read timeout)."""

_NODE_STATES_THAT_NEED_ATTENTION = {
    models.BatchNodeState.START_TASK_FAILED,
    models.BatchNodeState.UNUSABLE,
}
_RESOURCE_NAME_PREFIX = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def enum_value(value: object) -> str:
    """Return the wire value of an SDK enum member (or of a plain string), lower-cased.

    The SDK returns states as ``str`` enums whose ``str()`` is ``"BatchNodeState.IDLE"``, not
    ``"idle"``; compare and print ``enum_value(node.state)`` instead.
    """
    return str(getattr(value, "value", value)).lower()


def unique_resource_name(prefix: str) -> str:
    """Return ``prefix`` plus a UTC timestamp and a random suffix, e.g. ``helloworld-20250101t120000-3f9a1c``.

    The result is a valid id for pools, jobs and tasks, and a valid blob container name, so two
    runs never collide. ``prefix`` must be lower-case letters, digits and inner hyphens.
    """
    if not _RESOURCE_NAME_PREFIX.match(prefix) or "--" in prefix or len(prefix) > 40:
        raise ValueError(
            f"resource name prefix {prefix!r} must be 1-40 lower-case letters, digits and single inner hyphens"
        )
    timestamp = datetime.now(timezone.utc).strftime("%Y%m%dt%H%M%S")
    return f"{prefix}-{timestamp}-{secrets.token_hex(3)}"


def wrap_commands_in_shell(commands: Sequence[str], shell: str = "/bin/bash") -> str:
    """Return one Batch command line that runs ``commands`` in order in ``shell`` and stops at the first failure.

    Batch runs a Linux command line without a shell: no ``$VARIABLES``, globs, pipes or ``&&``.
    This wraps the commands as ``/bin/bash -c 'set -e; command1; command2'`` so they get a shell,
    and ``set -e`` makes the task fail with the exit code of the first command that fails.
    """
    if not commands:
        raise ValueError("wrap_commands_in_shell needs at least one command")
    script = "set -e"
    for command in commands:
        command = command.strip()
        # A command sent to the background already ends with its separator: "cmd &; next" is a syntax error.
        script += " " + command if script.endswith("&") else "; " + command
    return f"{shell} -c {shlex.quote(script)}"


def describe_batch_error(error: BaseException) -> str:
    """Return one line explaining a Batch (or Storage) error: code, HTTP status, message, details.

    Secrets such as SAS signatures are redacted, so the line is safe to print or log.
    """
    if isinstance(error, models.CreateTasksError):
        reasons = [
            f"task {result.task_id}: {_describe_batch_error_model(result.error)}"
            for result in error.failure_tasks
        ]
        reasons += [describe_batch_error(inner) for inner in error.errors]
        description = "could not add tasks: " + "; ".join(reasons or [str(error)])
    elif isinstance(error, HttpResponseError):
        description = _describe_http_response_error(error)
    else:
        description = f"{type(error).__name__}: {error}"
    return redact_secrets(" ".join(description.split()))


def _describe_batch_error_model(error: Optional[models.BatchError]) -> str:
    if error is None:
        return "unknown error"
    message = error.message.value if error.message and error.message.value else ""
    details = ", ".join(f"{item.key}={item.value}" for item in error.error_values or [])
    return _join_error_parts(error.code, None, message, details)


def _describe_http_response_error(error: HttpResponseError) -> str:
    odata_error = error.error
    code = (odata_error.code if odata_error else None) or getattr(error, "error_code", None)
    if odata_error and odata_error.message:
        message = odata_error.message
    else:
        message = error.reason or str(error.message or "")
    details = ", ".join(
        f"{detail.code}={detail.message}" for detail in (odata_error.details if odata_error else [])
    )
    return _join_error_parts(code, error.status_code, message, details)


def _join_error_parts(code: Optional[str], status: Optional[int], message: str, details: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    request_id = next((line.split(":", 1)[1] for line in lines if line.startswith("RequestId:")), None)
    text = " ".join(line for line in lines if not line.startswith(("RequestId:", "Time:"))) or "no message"
    head = code or "Error"
    if status:
        head += f" (HTTP {status})"
    description = f"{head}: {text}"
    if details:
        description += f" [{details}]"
    if request_id:
        description += f" (request id {request_id})"
    return description


def select_verified_linux_image(
    batch_client: BatchClient,
    publisher: str = "canonical",
    offer: str = "",
    sku_prefix: str = "",
    required_capability: Optional[str] = None,
) -> models.VirtualMachineConfiguration:
    """Pick a Linux image that Batch lists as verified and return it with its node agent SKU.

    Filters ``list_supported_images()`` by publisher, and by offer and SKU prefix when given, to
    Linux images with verification type ``verified`` that have not reached Batch's end of support
    (and that have ``required_capability``, e.g. ``DockerCompatible``, when given). Arm64 images
    are skipped unless the SKU prefix asks for them. When several match, the one whose SKU sorts
    last, usually the newest release, wins. Raises ``LookupError`` when nothing matches.
    """
    now = datetime.now(timezone.utc)
    candidates = []
    for image in batch_client.list_supported_images():
        reference = image.image_reference
        sku = (reference.sku or "").lower()
        if (
            enum_value(image.os_type) == models.OSType.LINUX.value
            and enum_value(image.verification_type) == models.ImageVerificationType.VERIFIED.value
            and (reference.publisher or "").lower() == publisher.lower()
            and (not offer or (reference.offer or "").lower() == offer.lower())
            and sku.startswith(sku_prefix.lower())
            and ("arm64" not in sku or "arm64" in sku_prefix.lower())
            and (image.batch_support_end_of_life is None or image.batch_support_end_of_life > now)
            and (required_capability is None or required_capability in (image.capabilities or []))
        ):
            candidates.append(image)
    if not candidates:
        wanted = f"publisher {publisher!r}, offer {offer or 'any'!r}, SKU starting with {sku_prefix or 'anything'!r}"
        if required_capability:
            wanted += f", capability {required_capability!r}"
        raise LookupError(f"no verified Linux image in list_supported_images() matches {wanted}")
    chosen = max(candidates, key=lambda image: ((image.image_reference.sku or ""), image.image_reference.offer or ""))
    reference = chosen.image_reference
    logger.info(
        "Selected image %s/%s/%s with node agent %s",
        reference.publisher, reference.offer, reference.sku, chosen.node_agent_sku_id,
    )
    return models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(
            publisher=reference.publisher,
            offer=reference.offer,
            sku=reference.sku,
            version=reference.version or "latest",
        ),
        node_agent_sku_id=chosen.node_agent_sku_id,
    )


def retry_if_the_answer_is_lost(send: Callable[[], _T], what: str, attempts: int = CREATE_ATTEMPTS) -> _T:
    """Call ``send`` again (up to ``attempts`` times in all) when its answer is lost after the request left.

    The SDK does not retry a POST whose connection was reset or whose answer timed out
    (``ServiceResponseError``): the service may have done the work. Only use this for requests
    that are safe to repeat, such as the create-if-not-exists helpers here, which treat "already
    exists" as success.
    """
    for attempt in range(1, attempts + 1):
        try:
            return send()
        except (ServiceResponseError, models.CreateTasksError) as error:
            if attempt == attempts or not _only_answers_were_lost(error):
                raise
            logger.warning("%s: the answer was lost (%s); sending it again (attempt %d of %d)",
                           what, describe_batch_error(error), attempt + 1, attempts)
    raise AssertionError("unreachable")


def _only_answers_were_lost(error: BaseException) -> bool:
    """True for a lost answer, or a ``CreateTasksError`` made only of lost answers (no task was refused)."""
    if isinstance(error, models.CreateTasksError):
        return not error.failure_tasks and bool(error.errors) and all(
            isinstance(inner, ServiceResponseError) for inner in error.errors
        )
    return isinstance(error, ServiceResponseError)


def pool_exists(batch_client: BatchClient, pool_id: str) -> bool:
    """Return whether a pool exists.

    ``BatchClient.pool_exists`` may raise ``ResourceNotFoundError`` for a missing pool instead of
    returning False; both answers mean "no".
    """
    try:
        return bool(batch_client.pool_exists(pool_id))
    except ResourceNotFoundError:
        return False


def create_pool_if_not_exists(batch_client: BatchClient, pool: models.BatchPoolCreateOptions) -> bool:
    """Create ``pool`` unless a pool with its id exists. Return True if this call created it.

    An existing pool is reused as it is, even if its settings differ from ``pool``.
    """
    if pool_exists(batch_client, pool.id):
        logger.info("Pool %s already exists; reusing it", pool.id)
        return False
    attempts = []

    def send() -> None:
        attempts.append(pool.id)
        batch_client.create_pool(pool)

    try:
        retry_if_the_answer_is_lost(send, f"create pool {pool.id}")
    except ResourceExistsError:
        if len(attempts) > 1:  # the request whose answer was lost created it
            logger.info("Created pool %s (the first answer was lost)", pool.id)
            return True
        logger.info("Pool %s was created concurrently; reusing it", pool.id)
        return False
    logger.info("Created pool %s (%s x %s)", pool.id, pool.target_dedicated_nodes, pool.vm_size)
    return True


def create_job_if_not_exists(batch_client: BatchClient, job: models.BatchJobCreateOptions) -> bool:
    """Create ``job`` unless a job with its id exists. Return True if this call created it."""
    attempts = []

    def send() -> None:
        attempts.append(job.id)
        batch_client.create_job(job)

    try:
        retry_if_the_answer_is_lost(send, f"create job {job.id}")
    except ResourceExistsError:
        if len(attempts) > 1:  # the request whose answer was lost created it
            logger.info("Created job %s (the first answer was lost)", job.id)
            return True
        logger.info("Job %s already exists; reusing it", job.id)
        return False
    logger.info("Created job %s", job.id)
    return True


def add_tasks(batch_client: BatchClient, job_id: str, tasks: Sequence[models.BatchTaskCreateOptions]) -> list[str]:
    """Add tasks to a job, in chunks of up to 100 per request. Return their ids.

    Uses ``BatchClient.create_tasks``, which retries server errors, splits chunks that are too
    large and treats a task that already exists as added (so a request whose answer was lost is
    simply sent again). Raises ``CreateTasksError`` (see
    ``describe_batch_error``) if any task could not be added.
    """
    if not tasks:
        return []
    retry_if_the_answer_is_lost(lambda: batch_client.create_tasks(job_id, list(tasks)), f"add tasks to job {job_id}")
    task_ids = [task.id for task in tasks]
    logger.info("Added %d task(s) to job %s", len(task_ids), job_id)
    return task_ids


def _sleep_before_next_poll(deadline: float, poll_interval_seconds: float) -> None:
    time.sleep(max(0.0, min(poll_interval_seconds, deadline - time.monotonic())))


def wait_for_all_nodes_to_reach_state(
    batch_client: BatchClient,
    pool_id: str,
    timeout: timedelta,
    node_states: Collection[NodeState] = (models.BatchNodeState.IDLE,),
    poll_interval_seconds: float = 5.0,
    report_progress: Optional[Callable[[str], None]] = None,
) -> list[models.BatchNode]:
    """Wait until the pool has allocated all its nodes and every node is in one of ``node_states``.

    ``report_progress`` (e.g. ``print``) is called with one line whenever the pool's allocation
    state or its nodes' states change, so a long wait shows where it is. Returns the nodes. Raises ``RuntimeError`` as soon as the pool reports a resize error or a
    node fails its start task or becomes unusable (waiting longer would not help), and
    ``TimeoutError`` when ``timeout`` passes first.
    """
    wanted = {enum_value(state) for state in node_states}
    deadline = time.monotonic() + timeout.total_seconds()
    last_progress = ""
    while True:
        pool = batch_client.get_pool(pool_id)
        if pool.resize_errors:
            reasons = "; ".join(f"{error.code}: {error.message}" for error in pool.resize_errors)
            raise RuntimeError(f"pool {pool_id} could not allocate its nodes: {reasons}")
        nodes = list(batch_client.list_nodes(pool_id))
        for node in nodes:
            if node.state in _NODE_STATES_THAT_NEED_ATTENTION and enum_value(node.state) not in wanted:
                raise RuntimeError(_describe_failed_node(pool_id, node))
        target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
        states = [enum_value(node.state) for node in nodes]
        if (
            pool.allocation_state == models.AllocationState.STEADY
            and len(nodes) >= target
            and all(state in wanted for state in states)
        ):
            logger.info("All %d node(s) of pool %s are %s", len(nodes), pool_id, "/".join(sorted(wanted)))
            return nodes
        if time.monotonic() >= deadline:
            seen = ", ".join(f"{states.count(state)} {state}" for state in sorted(set(states))) or "no nodes yet"
            raise TimeoutError(
                f"timed out after {timeout} waiting for the {target} node(s) of pool {pool_id} to be "
                f"{' or '.join(sorted(wanted))} (allocation {enum_value(pool.allocation_state)}; nodes: {seen})"
            )
        seen = ", ".join(f"{states.count(state)} {state}" for state in sorted(set(states))) or "no nodes yet"
        progress = f"pool {pool_id}: allocation {enum_value(pool.allocation_state)}, nodes: {seen}"
        logger.debug("%s", progress)
        if report_progress is not None and progress != last_progress:
            report_progress(progress)
        last_progress = progress
        _sleep_before_next_poll(deadline, poll_interval_seconds)


def _describe_failed_node(pool_id: str, node: models.BatchNode) -> str:
    description = f"node {node.id} of pool {pool_id} is {enum_value(node.state)}"
    info = node.start_task_info
    if info is not None:
        description += f"; its start task exited with code {info.exit_code}"
        if info.failure_info is not None:
            description += f" ({info.failure_info.code}: {info.failure_info.message})"
        description += "; read startup/stdout.txt and startup/stderr.txt on the node"
    for error in node.errors or []:
        description += f"; {error.code}: {error.message}"
    return description


def wait_for_tasks_to_complete(
    batch_client: BatchClient,
    job_id: str,
    timeout: timedelta,
    poll_interval_seconds: float = 5.0,
    report_progress: Optional[Callable[[str], None]] = None,
) -> list[models.BatchTask]:
    """Wait until every task of the job is completed. Return all the job's tasks.

    ``report_progress`` (e.g. ``print``) is called with one line whenever the number of tasks
    in each state changes, so a long wait shows where it is.

    Each poll is one ``list_tasks`` call that asks only for the tasks not yet completed
    (``$filter``) and only their id and state (``$select``), so the cost of a poll does not grow
    with the number of finished tasks. When none is left, one more call returns every task with
    its execution and node information. "Completed" includes failed tasks: check
    ``task.execution_info.result``. Raises ``TimeoutError`` naming the tasks still running.
    """
    deadline = time.monotonic() + timeout.total_seconds()
    last_progress = ""
    while True:
        incomplete = list(
            batch_client.list_tasks(job_id, filter="state ne 'completed'", select=["id", "state"])
        )
        if not incomplete:
            break
        if time.monotonic() >= deadline:
            listed = ", ".join(f"{task.id} ({enum_value(task.state)})" for task in incomplete[:10])
            more = f" and {len(incomplete) - 10} more" if len(incomplete) > 10 else ""
            raise TimeoutError(
                f"timed out after {timeout} waiting for the tasks of job {job_id} to complete; "
                f"{len(incomplete)} still not completed: {listed}{more}"
            )
        states = [enum_value(task.state) for task in incomplete]
        counts = ", ".join(f"{states.count(state)} {state}" for state in sorted(set(states)))
        progress = f"job {job_id}: {len(incomplete)} task(s) not completed yet ({counts})"
        logger.debug("%s", progress)
        if report_progress is not None and progress != last_progress:
            report_progress(progress)
        last_progress = progress
        _sleep_before_next_poll(deadline, poll_interval_seconds)
    tasks = list(batch_client.list_tasks(job_id, select=["id", "state", "commandLine", "executionInfo", "nodeInfo"]))
    logger.info("All %d task(s) of job %s completed", len(tasks), job_id)
    return tasks


def failed_tasks(tasks: Iterable[models.BatchTask]) -> list[models.BatchTask]:
    """Return the completed tasks whose result is failure (non-zero exit code or a failure to start)."""
    return [
        task for task in tasks
        if task.execution_info is not None and task.execution_info.result == models.BatchTaskExecutionResult.FAILURE
    ]


def raise_if_any_task_failed(tasks: Iterable[models.BatchTask]) -> None:
    """Raise ``RuntimeError`` describing every failed task among ``tasks``, if there is one."""
    failures = failed_tasks(tasks)
    if failures:
        raise RuntimeError("; ".join(describe_task_result(task) for task in failures))


def describe_task_result(task: models.BatchTask) -> str:
    """Return one line with a completed task's exit code and, if it failed, why."""
    info = task.execution_info
    if info is None:
        return f"task {task.id}: {enum_value(task.state)}, no execution information"
    description = f"task {task.id}: {enum_value(info.result or task.state)}, exit code {info.exit_code}"
    if info.failure_info is not None:
        description += f" ({info.failure_info.code}: {info.failure_info.message})"
    return description


def read_task_file_as_text(
    batch_client: BatchClient, job_id: str, task_id: str, file_path: str = "stdout.txt", encoding: str = "utf-8"
) -> str:
    """Download a task file (path relative to the task directory, e.g. ``stdout.txt`` or ``wd/out.txt``) as text.

    Batch writes stdout.txt and stderr.txt on Linux nodes as UTF-8; undecodable bytes become U+FFFD.
    """
    content = b"".join(batch_client.download_task_file(job_id, task_id, file_path))
    return content.decode(encoding, errors="replace")


def print_task_output(
    batch_client: BatchClient,
    job_id: str,
    task_id: str,
    file_names: Sequence[str] = ("stdout.txt", "stderr.txt"),
    stream: Optional[TextIO] = None,
) -> dict[str, str]:
    """Print a task's stdout.txt and stderr.txt (or ``file_names``) under a header each. Return the texts.

    A file the task never wrote (for example because it never started) is reported as missing.
    """
    stream = stream or sys.stdout
    texts = {}
    for file_name in file_names:
        try:
            text = read_task_file_as_text(batch_client, job_id, task_id, file_name)
        except ResourceNotFoundError:
            print(f"---- {file_name} of task {task_id}: not found ----", file=stream)
            continue
        texts[file_name] = text
        print(f"---- {file_name} of task {task_id} ----", file=stream)
        print(text.rstrip("\n") if text.strip() else "(empty)", file=stream)
    stream.flush()
    return texts
