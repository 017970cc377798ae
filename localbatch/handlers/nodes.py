"""Compute nodes, node users and remote login settings."""
from __future__ import annotations

from azure.batch import models
from azure.batch.models import _models as generated_models

from ..http import Call, Reply
from .common import body_of, entity_list_reply, entity_reply, optional_body
from .views import node_view, pool_url


def _node_url(call: Call) -> str:
    return f"{pool_url(call, call.params['poolId'])}/nodes/{call.params['nodeId']}"


def list_nodes(call: Call) -> Reply:
    pool = call.service.repo.get_pool(call.params["poolId"])
    return entity_list_reply(call, list(pool.nodes.values()), node_view, "nodes")


def get_node(call: Call) -> Reply:
    node = call.service.repo.get_node(call.params["poolId"], call.params["nodeId"])
    return entity_reply(call, node_view(call, node), "nodes/@Element")


def reboot_node(call: Call) -> Reply:
    body = optional_body(call, generated_models.BatchNodeRebootOptions)
    call.service.nodes.reboot_node(call.params["poolId"], call.params["nodeId"], body.get("nodeRebootOption") or "requeue")
    return Reply(202, None, {"DataServiceId": _node_url(call)})


def reimage_node(call: Call) -> Reply:
    body = optional_body(call, generated_models.BatchNodeReimageOptions)
    call.service.nodes.reimage_node(call.params["poolId"], call.params["nodeId"], body.get("nodeReimageOption") or "requeue")
    return Reply(202, None, {"DataServiceId": _node_url(call)})


def disable_node_scheduling(call: Call) -> Reply:
    body = optional_body(call, models.BatchNodeDisableSchedulingOptions)
    call.service.nodes.disable_node_scheduling(call.params["poolId"], call.params["nodeId"],
                                           body.get("nodeDisableSchedulingOption") or "requeue")
    return Reply(200, None, {"DataServiceId": _node_url(call)})


def enable_node_scheduling(call: Call) -> Reply:
    call.service.nodes.enable_node_scheduling(call.params["poolId"], call.params["nodeId"])
    return Reply(200, None, {"DataServiceId": _node_url(call)})


def create_node_user(call: Call) -> Reply:
    body = body_of(call, models.BatchNodeUserCreateOptions)
    call.service.nodes.create_node_user(call.params["poolId"], call.params["nodeId"], body)
    return Reply(201, None, {"DataServiceId": f"{_node_url(call)}/users/{body['name']}"})


def replace_node_user(call: Call) -> Reply:
    body = body_of(call, models.BatchNodeUserReplaceOptions)
    call.service.nodes.replace_node_user(call.params["poolId"], call.params["nodeId"], call.params["userName"], body)
    return Reply(200, None, {"DataServiceId": f"{_node_url(call)}/users/{call.params['userName']}"})


def delete_node_user(call: Call) -> Reply:
    call.service.nodes.delete_node_user(call.params["poolId"], call.params["nodeId"], call.params["userName"])
    return Reply(200)


def get_node_remote_login_settings(call: Call) -> Reply:
    return Reply(200, call.service.nodes.get_node_remote_login_settings(call.params["poolId"], call.params["nodeId"]))
