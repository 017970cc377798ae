"""Small wire-format helpers: timestamps, ETags, durations, identifiers."""
from __future__ import annotations

import datetime as dt
import email.utils
import functools
import itertools
import re
import time

_etag_counter = itertools.count(int(time.time() * 1_000_000))

MAX_DURATION = "P10675199DT2H48M5.4775807S"
_DURATION_RE = re.compile(
    r"^P(?:(?P<days>\d+(?:\.\d+)?)D)?(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(moment: dt.datetime) -> str:
    """ISO-8601 UTC with a Z and 7 fraction digits, as the service writes timestamps."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


_second_cache: list = [-1, ""]


def now_iso() -> str:
    """The current time as `iso()` writes it; the seconds part is formatted once per second."""
    now = time.time()
    second = int(now)
    if _second_cache[0] != second:
        _second_cache[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second_cache[1]}.{int((now - second) * 10_000_000):07d}Z"


def parse_iso(text: str) -> dt.datetime:
    text = text.rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


def rfc1123(text_or_moment) -> str:
    moment = parse_iso(text_or_moment) if isinstance(text_or_moment, str) else text_or_moment
    return email.utils.format_datetime(moment.astimezone(dt.timezone.utc), usegmt=True)


def new_etag() -> str:
    """`0x` and 15 upper-case hex digits, unique and increasing."""
    return "0x" + format(next(_etag_counter), "015X")[-15:]


@functools.lru_cache(maxsize=256)
def parse_duration(text: str) -> float:
    """ISO-8601 duration (the service's subset) to seconds; raises ValueError."""
    match = _DURATION_RE.match(text or "")
    if not match or text in ("P", "PT"):
        raise ValueError(f"not an ISO-8601 duration: {text!r}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return (parts.get("days", 0) * 86400 + parts.get("hours", 0) * 3600
            + parts.get("minutes", 0) * 60 + parts.get("seconds", 0))
