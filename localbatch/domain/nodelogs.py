"""upload_node_logs: a node's logs to a blob container, answered as the service answers."""
from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Optional

from ..errors import BatchServiceError, invalid_property
from ..node.agentlog import AGENT_LOG_NAME
from ..node.logs import LogUploadError, node_log_files, upload
from ..node.storage_identity import StorageIdentityError
from .context import DomainContext


async def upload_node_logs(context: DomainContext, pool_id: str, node_id: str, body: dict) -> dict:
    node = context.repo.get_node(pool_id, node_id)
    if node.state in ("creating", "starting", "leavingpool"):
        raise BatchServiceError("NodeNotReady", "The node's logs cannot be uploaded before it has started.")
    start, end = _moment("startTime", body["startTime"]), _moment("endTime", body.get("endTime"))
    if end is not None and end < start:
        raise invalid_property("endTime", body["endTime"], "endTime must not be before startTime.")
    parts = body["containerUrl"].split("?", 1)[0]
    if not parts.startswith(("http://", "https://")):
        raise invalid_property("containerUrl", parts, "Expected the URL of a blob container.")
    storage = context.identity(node).storage
    headers, trust = {}, storage.ssl if storage is not None else True
    if body.get("identityReference"):
        try:
            if storage is None:
                raise StorageIdentityError("Identity not found: this node has no managed identity endpoint.")
            headers = storage.headers(body["identityReference"])
        except StorageIdentityError as exc:
            raise invalid_property("identityReference.resourceId", body["identityReference"].get("resourceId"),
                                   str(exc)) from None
    root = context.agent.layout.root(node.pool_id, node.id)
    loop = asyncio.get_running_loop()
    files = await loop.run_in_executor(None, node_log_files, root, start, end)
    agent_log = await loop.run_in_executor(None, context.agent.log.lines_between, node.pool_id, node.id, start, end)
    contents = {AGENT_LOG_NAME: agent_log} if agent_log else {}
    directory = f"{node.pool_id}/{node.id}/{uuid.uuid4()}"
    try:
        await upload(body["containerUrl"], directory, root, files, headers, trust, contents)
    except LogUploadError as exc:
        raise invalid_property("containerUrl", parts, f"The logs could not be uploaded: {exc}.") from None
    return {"virtualDirectoryName": directory, "numberOfFilesUploaded": len(files) + len(contents)}


def _moment(name: str, text: Optional[str]) -> Optional[dt.datetime]:
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_property(name, text, "Expected an ISO-8601 date and time.") from None
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment
