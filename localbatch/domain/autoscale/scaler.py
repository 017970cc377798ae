"""Autoscale of pools: enable, disable, evaluate, and the evaluation every autoScaleEvaluationInterval.

An enabled pool is evaluated at once and then every interval of the domain's clock (tests move the
clock; the service's shortest interval is five minutes). Each run is recorded in the pool's
`autoScaleRun` ({timestamp, results} or {timestamp, error}); a successful run sets the pool's
targets and resizes it. A formula that does not parse is refused when it is set (400 naming it);
one that fails while it runs (a metric without enough samples, a division by zero) leaves the
pool as it is and says why in `autoScaleRun.error`.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Optional

from ... import wire
from ...errors import BatchServiceError
from ..context import DomainContext
from ..entities import Pool
from ..pools import Pools
from ..runtime import Clock
from .checks import check_formula, check_interval
from .formula import DEALLOCATION_OPTIONS, Environment, FormulaError, Keyword, evaluate, format_value, parse
from .samples import NOT_PROVIDED, SAMPLE_PERIOD_SECONDS, PoolSamples, plain_variables

logger = logging.getLogger(__name__)

MAXIMUM_NODES = 2 ** 31 - 1  # beyond a 32-bit count; the account's core quota stops allocation far earlier
SETTABLE = ("$TargetDedicatedNodes", "$TargetLowPriorityNodes", "$NodeDeallocationOption")
ERROR_MESSAGES = {
    "InsufficientSampleData": "Autoscale evaluation failed due to insufficient sample data",
    "AutoScalingFormulaEvaluationError": "The autoscale formula could not be evaluated",
}
ENABLE_SPACING_SECONDS = 30  # "You cannot call this API for the same Pool more than once every 30 seconds."


class AutoScale:
    def __init__(self, context: DomainContext, pools: Pools, clock: Clock):
        self.context = context
        self.repo = context.repo
        self.pools = pools
        self.clock = clock
        self.samples: dict[str, PoolSamples] = {}
        self.last_enable: dict[str, dt.datetime] = {}  # pool key -> its last enable request (in memory)
        pools.start_auto_scale = self._start

    # ---- operations ---------------------------------------------------------------------------------
    def enable_pool_auto_scale(self, pool_id: str, body: dict) -> Pool:
        pool = self.repo.get_pool(pool_id)
        if pool.state == "deleting":
            raise BatchServiceError("PoolBeingDeleted")
        enabled = bool(pool.data.get("enableAutoScale"))
        # Already enabled: what the body leaves out stays as it was.
        formula = body.get("autoScaleFormula")
        if formula is None and enabled:
            formula = pool.data.get("autoScaleFormula")
        check_formula(formula)
        interval = body.get("autoScaleEvaluationInterval")
        interval = check_interval(pool.data.get("autoScaleEvaluationInterval") if interval is None and enabled else interval)
        if not enabled and pool.allocation_state != "steady":
            raise BatchServiceError("PoolBeingResized", "Automatic scaling cannot be enabled while the pool resizes.")
        now = self.clock.now()
        last = self.last_enable.get(pool.key)
        if last is not None and (now - last).total_seconds() < ENABLE_SPACING_SECONDS:
            raise BatchServiceError("TooManyEnableAutoScaleRequests")
        self.last_enable[pool.key] = now
        pool.data.update({"enableAutoScale": True, "autoScaleFormula": formula, "autoScaleEvaluationInterval": interval})
        pool.touch()
        self._start(pool)
        return pool

    def disable_pool_auto_scale(self, pool_id: str) -> Pool:
        """The pool keeps its current targets and takes manual resizes again."""
        pool = self.repo.get_pool(pool_id)
        if pool.state == "deleting":
            raise BatchServiceError("PoolBeingDeleted")
        pool.data["enableAutoScale"] = False
        for name in ("autoScaleFormula", "autoScaleEvaluationInterval", "autoScaleRun"):
            pool.data.pop(name, None)
        pool.touch()
        self._stop(pool)
        return pool

    def evaluate_pool_auto_scale(self, pool_id: str, formula: str) -> dict:
        """The run the formula would give now, without applying it."""
        pool = self.repo.get_pool(pool_id)
        if not pool.data.get("enableAutoScale"):
            raise BatchServiceError("OperationInvalidForCurrentState",
                                    "The pool must have automatic scaling enabled to evaluate a formula.")
        if not formula:
            check_formula(formula)  # 400 naming the missing formula
        run, _ = self._run(pool, formula)  # one that does not parse is an error run, as on the service
        return run

    # ---- the periodic evaluation -----------------------------------------------------------------------
    def _start(self, pool: Pool) -> None:
        """Evaluate now, then every interval; sample the pool's metrics meanwhile."""
        self._samples_of(pool)
        self._sample(pool)
        self._evaluate(pool)

    def _stop(self, pool: Pool) -> None:
        self.clock.cancel(f"autoscale:{pool.key}")
        self.clock.cancel(f"autoscale-sample:{pool.key}")
        self._forget_samples(pool.key)

    def _samples_of(self, pool: Pool) -> PoolSamples:
        """The pool's sample history, kept in the store from its first sample on."""
        samples = self.samples.get(pool.key)
        if samples is None:
            samples = self.samples[pool.key] = PoolSamples(pool.key)
            samples.attach(self.context.store)
        return samples

    def _forget_samples(self, pool_key: str) -> None:
        samples = self.samples.pop(pool_key, None)
        if samples is not None:
            samples.attach(None)
            self.context.store.forget(PoolSamples.kind, pool_key)

    def _active(self, pool: Pool) -> bool:
        return (pool.attached and pool.state == "active" and bool(pool.data.get("enableAutoScale"))
                and self.repo.find_pool(pool.id) is pool)

    def _sample(self, pool: Pool) -> None:
        if not self._active(pool):
            self._stop(pool)
            return
        now = self.clock.now()
        self._samples_of(pool).take(now, self.repo.jobs_on_pool(pool.key))
        self.clock.alarm(f"autoscale-sample:{pool.key}", now + dt.timedelta(seconds=SAMPLE_PERIOD_SECONDS),
                         lambda: self._sample(pool))

    def _evaluate(self, pool: Pool) -> None:
        if not self._active(pool):
            self._stop(pool)
            return
        self._sample_now(pool)  # the samples due since the last one (the two alarms may fire in either order)
        run, targets = self._run(pool, pool.data["autoScaleFormula"])
        pool.data["autoScaleRun"] = run
        if targets is not None:
            dedicated, low_priority, deallocation = targets
            if (dedicated, low_priority) != (pool.data["targetDedicatedNodes"], pool.data["targetLowPriorityNodes"]):
                self.pools.resize_to(pool, dedicated, low_priority, deallocation)
        interval = wire.parse_duration(pool.data["autoScaleEvaluationInterval"])
        self.clock.alarm(f"autoscale:{pool.key}", self.clock.now() + dt.timedelta(seconds=interval),
                         lambda: self._evaluate(pool))

    def _sample_now(self, pool: Pool) -> None:
        self._samples_of(pool).take(self.clock.now(), self.repo.jobs_on_pool(pool.key))

    def _run(self, pool: Pool, formula: str) -> tuple[dict, Optional[tuple[int, int, str]]]:
        """The autoScaleRun of `formula` on the pool now, and the targets it sets (None on error)."""
        now = self.clock.now()
        samples = self.samples.get(pool.key) or PoolSamples(pool.key)
        environment = Environment(
            now=now, plain=plain_variables(pool), sampled=samples.sampled(now), not_provided=NOT_PROVIDED,
            settable={"$TargetDedicatedNodes": float(pool.data["targetDedicatedNodes"]),
                      "$TargetLowPriorityNodes": float(pool.data["targetLowPriorityNodes"]),
                      "$NodeDeallocationOption": Keyword("requeue")})
        timestamp = wire.iso(now)
        try:
            values = evaluate(parse(formula), environment)
            targets = (_node_count(values, "$TargetDedicatedNodes"), _node_count(values, "$TargetLowPriorityNodes"),
                       _deallocation(values))
        except FormulaError as exc:
            # As the service does, a failed run still reports the variables it would have set, as they were.
            return {"timestamp": timestamp, "results": _results(environment.settable, SETTABLE), "error": {
                "code": exc.code, "message": ERROR_MESSAGES[exc.code],
                "values": [{"name": "Message", "value": exc.detail}]}}, None
        shown = [*SETTABLE, *(name for name in environment.assigned if name not in SETTABLE)]
        return {"timestamp": timestamp, "results": _results(values, shown)}, targets

    # ---- start-up ------------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Once the loop runs: carry on with each autoscale pool's sample history, and evaluate it
        when its next run is due."""
        for record in self.context.store.load(PoolSamples.kind):
            samples = PoolSamples.from_record(record)
            pool = self.repo.pools.get(samples.key)
            if pool is None or not pool.data.get("enableAutoScale") or pool.state != "active":
                self.context.store.forget(PoolSamples.kind, samples.key)  # its pool went while localbatch was down
                continue
            samples.attach(self.context.store)
            self.samples[samples.key] = samples
        for pool in list(self.repo.pools.values()):
            if not pool.data.get("enableAutoScale") or pool.state != "active":
                continue
            self._sample(pool)
            last = (pool.data.get("autoScaleRun") or {}).get("timestamp")
            if last is None:
                self._evaluate(pool)
                continue
            due = wire.parse_iso(last) + dt.timedelta(seconds=wire.parse_duration(pool.data["autoScaleEvaluationInterval"]))
            self.clock.alarm(f"autoscale:{pool.key}", due, lambda pool=pool: self._evaluate(pool))


def _results(values: dict, names) -> str:
    """autoScaleRun.results: `name=value` for each variable, `;` between them."""
    return ";".join(f"{name}={format_value(values[name])}" for name in names)


def _node_count(values: dict, name: str) -> int:
    value = values[name]
    if not isinstance(value, float):
        raise FormulaError(f"{name} must be a number")
    if not 0 <= value <= MAXIMUM_NODES:
        raise FormulaError(f"{name} must be between 0 and {MAXIMUM_NODES}, got {format_value(value)}")
    return int(value)


def _deallocation(values: dict) -> str:
    value = values["$NodeDeallocationOption"]
    if not isinstance(value, Keyword) or value.name not in DEALLOCATION_OPTIONS:
        raise FormulaError("$NodeDeallocationOption must be one of " + ", ".join(DEALLOCATION_OPTIONS))
    return value.name
