"""Pool autoscale: enable, disable, evaluate."""
from __future__ import annotations

from azure.batch import models

from ..http import Call, Reply
from .common import body_of, check_conditions, updated
from .views import pool_url


def _pool(call: Call):
    pool = call.service.repo.get_pool(call.params["poolId"])
    check_conditions(call, pool.data)
    return pool


def enable_pool_auto_scale(call: Call) -> Reply:
    _pool(call)
    pool = call.service.autoscale.enable_pool_auto_scale(call.params["poolId"],
                                                        body_of(call, models.BatchPoolEnableAutoScaleOptions))
    return updated(call, pool_url(call, pool.id), pool.data)


def disable_pool_auto_scale(call: Call) -> Reply:
    pool = call.service.autoscale.disable_pool_auto_scale(call.params["poolId"])
    return updated(call, pool_url(call, pool.id), pool.data)


def evaluate_pool_auto_scale(call: Call) -> Reply:
    body = body_of(call, models.BatchPoolEvaluateAutoScaleOptions)
    run = call.service.autoscale.evaluate_pool_auto_scale(call.params["poolId"], body["autoScaleFormula"])
    return Reply(200, {"odata.metadata": call.metadata("Microsoft.Azure.Batch.Protocol.Entities.AutoScaleRun"), **run},
                 {"DataServiceId": f"{pool_url(call, call.params['poolId'])}/evaluateautoscale"})
