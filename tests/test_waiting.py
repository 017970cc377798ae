"""tests/waiting.py: the one bounded wait every test uses."""

from __future__ import annotations

import itertools
from typing import Callable

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from tests.waiting import wait_for


def answers(*outcomes: object) -> Callable[[], object]:
    """A check that gives ``outcomes`` one per call, raising those that are exceptions; the last one repeats."""
    upcoming = itertools.chain(outcomes, itertools.repeat(outcomes[-1]))

    def check() -> object:
        outcome = next(upcoming)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    return check


def test_a_404_is_not_yet_and_the_first_truthy_value_is_returned() -> None:
    check = answers(ResourceNotFoundError("FileNotFound"), "", "stdout")

    assert wait_for(check, "stdout", timeout=5, poll=0.001) == "stdout"


def test_until_decides_when_the_value_is_ready() -> None:
    check = answers("fore", "foreground-finished\n")

    assert wait_for(check, "output", timeout=5, poll=0.001, until=lambda out: "finished" in out) == "foreground-finished\n"


def test_the_timeout_names_what_it_waited_for_the_last_value_and_the_last_tolerated_error() -> None:
    check = answers(ResourceNotFoundError("The task has not been assigned to a compute node yet."), "partial")

    with pytest.raises(TimeoutError) as caught:
        wait_for(check, "task t1 to print 'done'", timeout=0.05, poll=0.001, until=lambda out: "done" in out)

    message = str(caught.value)
    assert "waiting for task t1 to print 'done'" in message
    assert "last saw 'partial'" in message
    assert "ResourceNotFoundError: The task has not been assigned to a compute node yet." in message
    assert isinstance(caught.value.__cause__, ResourceNotFoundError)


def test_an_error_that_is_not_tolerated_ends_the_wait_at_once() -> None:
    calls = []

    def check() -> None:
        calls.append(1)
        raise HttpResponseError("500 Internal Server Error")

    with pytest.raises(HttpResponseError):
        wait_for(check, "anything", timeout=5, poll=0.001)
    assert len(calls) == 1


def test_tolerate_can_be_narrowed_so_a_404_ends_the_wait() -> None:
    with pytest.raises(ResourceNotFoundError):
        wait_for(answers(ResourceNotFoundError("gone")), "anything", timeout=5, poll=0.001, tolerate=())
