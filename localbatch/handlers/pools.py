"""Pools, supported images and node counts."""
from __future__ import annotations

from azure.batch import models

from ..http import Call, Reply
from ..images import SUPPORTED_IMAGES
from .common import (accepted, body_of, check_conditions, created, entity_list_reply, entity_reply, list_reply,
                     updated)
from .views import pool_url, pool_view


def _pool(call: Call):
    """The pool the path names, once the request's conditional headers hold for it."""
    pool = call.service.repo.get_pool(call.params["poolId"])
    check_conditions(call, pool.data)
    return pool


def create_pool(call: Call) -> Reply:
    pool = call.service.pools.create_pool(body_of(call, models.BatchPoolCreateOptions))
    return created(call, pool_url(call, pool.id), pool.data)


def list_pools(call: Call) -> Reply:
    return entity_list_reply(call, call.service.all_pools(), pool_view, "pools")


def get_pool(call: Call) -> Reply:
    pool = _pool(call)
    return entity_reply(call, pool_view(call, pool), "pools/@Element")


def pool_exists(call: Call) -> Reply:
    pool = _pool(call)
    return Reply.entity(200, None, pool.data["eTag"], pool.data["lastModified"])


def delete_pool(call: Call) -> Reply:
    _pool(call)
    call.service.pools.delete_pool(call.params["poolId"])
    return accepted(call, pool_url(call, call.params["poolId"]))


def update_pool(call: Call) -> Reply:
    _pool(call)
    pool = call.service.pools.update_pool(call.params["poolId"], body_of(call, models.BatchPoolUpdateOptions))
    return updated(call, pool_url(call, pool.id), pool.data)


def replace_pool_properties(call: Call) -> Reply:
    pool = call.service.pools.replace_pool_properties(call.params["poolId"],
                                                      body_of(call, models.BatchPoolReplaceOptions))
    return updated(call, pool_url(call, pool.id), pool.data, status=204)


def resize_pool(call: Call) -> Reply:
    _pool(call)
    pool = call.service.pools.resize_pool(call.params["poolId"], body_of(call, models.BatchPoolResizeOptions))
    return updated(call, pool_url(call, pool.id), pool.data, status=202)


def stop_pool_resize(call: Call) -> Reply:
    _pool(call)
    pool = call.service.pools.stop_pool_resize(call.params["poolId"])
    return updated(call, pool_url(call, pool.id), pool.data, status=202)


def remove_nodes(call: Call) -> Reply:
    _pool(call)
    pool = call.service.pools.remove_nodes(call.params["poolId"], body_of(call, models.BatchNodeRemoveOptions))
    return updated(call, pool_url(call, pool.id), pool.data, status=202)


def list_supported_images(call: Call) -> Reply:
    return list_reply(call, SUPPORTED_IMAGES, "supportedimages", key=lambda image: image["nodeAgentSKUId"] + "/"
                      + "/".join(image["imageReference"][k] for k in ("publisher", "offer", "sku")))


def list_pool_node_counts(call: Call) -> Reply:
    return list_reply(call, call.service.pools.list_pool_node_counts(), "poolnodecounts", key=lambda counts: counts["poolId"])


