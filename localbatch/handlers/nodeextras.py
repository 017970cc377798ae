"""A node's VM extensions and its log upload."""
from __future__ import annotations

from azure.batch import models

from ..domain import extensions
from ..domain.nodelogs import upload_node_logs as upload
from ..http import Call, Reply
from .common import body_of, list_reply


def list_node_extensions(call: Call) -> Reply:
    pool = call.service.repo.get_pool(call.params["poolId"])
    node = call.service.repo.get_node(call.params["poolId"], call.params["nodeId"])
    return list_reply(call, extensions.node_extensions(pool, node), "extensions", filterable=False,
                      key=lambda view: view["vmExtension"]["name"])


def get_node_extension(call: Call) -> Reply:
    pool = call.service.repo.get_pool(call.params["poolId"])
    node = call.service.repo.get_node(call.params["poolId"], call.params["nodeId"])
    view = extensions.node_extension(pool, node, call.params["extensionName"])
    return Reply(200, {"odata.metadata": call.metadata("extensions/@Element"), **view})


async def upload_node_logs(call: Call) -> Reply:
    body = body_of(call, models.UploadBatchServiceLogsOptions)
    result = await upload(call.service.context, call.params["poolId"], call.params["nodeId"], body)
    return Reply(200, result)
