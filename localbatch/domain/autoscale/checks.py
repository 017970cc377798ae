"""Checks of the autoscale properties of a request: the formula parses, the interval is in range."""
from __future__ import annotations

from typing import Optional

from ... import wire
from ...errors import invalid_property, missing_property
from .formula import FormulaError, parse

DEFAULT_INTERVAL = "PT15M"
MINIMUM_INTERVAL_SECONDS = 5 * 60
MAXIMUM_INTERVAL_SECONDS = 168 * 3600


def check_formula(formula: Optional[str], prefix: str = "") -> None:
    """400 naming the property when the formula is missing or does not parse."""
    if not formula:
        raise missing_property(prefix + "autoScaleFormula")
    try:
        parse(formula)
    except FormulaError as exc:
        raise invalid_property(prefix + "autoScaleFormula", _shortened(formula), exc.detail) from None


def check_interval(interval: Optional[str], prefix: str = "") -> str:
    if interval is None:
        return DEFAULT_INTERVAL
    try:
        seconds = wire.parse_duration(interval)
    except ValueError:
        raise invalid_property(prefix + "autoScaleEvaluationInterval", interval, "Expected an ISO-8601 duration.") from None
    if not MINIMUM_INTERVAL_SECONDS <= seconds <= MAXIMUM_INTERVAL_SECONDS:
        raise invalid_property(prefix + "autoScaleEvaluationInterval", interval,
                               "The value must be between 5 minutes and 168 hours.")
    return interval


def _shortened(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
