"""Time in the emulated cloud: how long infrastructure steps take, a test-only way to hold them,
and the background work (timers and coroutines) the domain leaves running."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, fields
from typing import Any, Callable, Coroutine

from .. import wire

logger = logging.getLogger(__name__)


@dataclass
class Timings:
    """How long simulated infrastructure steps take, in seconds (short by default)."""
    node_creating: float = 0.1
    node_starting: float = 0.2
    pool_deleting: float = 0.1
    node_leaving: float = 0.05
    job_terminating: float = 0.05
    job_deleting: float = 0.05
    node_rebooting: float = 0.2
    output_files_uploading: float = 0.0  # before a task's output files go up (its process has exited)
    job_schedule_terminating: float = 0.05
    job_schedule_deleting: float = 0.05


STEPS = tuple(field.name for field in fields(Timings))


class Transitions:
    """Every timed step of the emulated infrastructure waits here.

    Tests hold a step (moto's manual state progression) to observe the transitional state it
    leaves an entity in (a pool `deleting`, a node `creating`) for as long as they need, then
    release it; nothing in the product holds steps.
    """

    def __init__(self, timings: Timings):
        self.timings = timings
        self._held: dict[str, asyncio.Event] = {}

    async def step(self, name: str) -> None:
        await asyncio.sleep(getattr(self.timings, name))
        while name in self._held:
            await self._held[name].wait()

    def hold(self, name: str) -> None:
        if name not in STEPS:
            raise ValueError(f"unknown step {name!r}; steps are {', '.join(STEPS)}")
        self._held.setdefault(name, asyncio.Event())

    def release(self, name: str) -> None:
        gate = self._held.pop(name, None)
        if gate is not None:
            gate.set()


class Background:
    """Coroutines and timers the domain starts; all cancelled on close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.closing = False

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        if self.closing:
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background work failed", exc_info=task.exception())

    def set_timer(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        """Call `callback` after `delay` seconds, replacing any timer of the same name."""
        self.cancel_timer(name)

        def fire() -> None:
            self._timers.pop(name, None)
            callback()
        self._timers[name] = asyncio.get_running_loop().call_later(delay, fire)

    def cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    async def close(self) -> None:
        self.closing = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False



class Clock:
    """The time that recurrences (job schedules, autoscale evaluations) are measured against.

    It is the wall clock, plus an offset that only tests move (`advance`): the real service's
    intervals are at least a minute (job schedules) or five minutes (autoscale), and a test must
    not wait that long. Alarms set through the clock fire when its time reaches them, so moving
    it forward fires what has become due at once.
    """

    def __init__(self, background: Background):
        self._background = background
        self._offset = dt.timedelta(0)
        self._alarms: dict[str, tuple[dt.datetime, Callable[[], None]]] = {}

    def now(self) -> dt.datetime:
        return wire.utcnow() + self._offset

    def alarm(self, name: str, when: dt.datetime, callback: Callable[[], None]) -> None:
        """Call `callback` once the clock reaches `when`, replacing any alarm of the same name."""
        def fire() -> None:
            self._alarms.pop(name, None)
            callback()
        self._alarms[name] = (when, fire)
        self._arm(name)

    def cancel(self, name: str) -> None:
        self._alarms.pop(name, None)
        self._background.cancel_timer(f"clock:{name}")

    def advance(self, seconds: float) -> None:
        """Test-only: move the clock forward, as if `seconds` had passed for every recurrence."""
        self._offset += dt.timedelta(seconds=seconds)
        for name in list(self._alarms):
            self._arm(name)

    def _arm(self, name: str) -> None:
        when, fire = self._alarms[name]
        delay = max(0.0, (when - self.now()).total_seconds())
        self._background.set_timer(f"clock:{name}", delay, fire)
