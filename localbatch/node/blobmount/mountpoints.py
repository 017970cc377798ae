"""The mount table: which file systems are mounted below a directory, and detaching them.

Nothing that removes a node's directories may walk into a mounted blob container (that would
delete its blobs), so every removal detaches what is mounted below first.
"""
from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger(__name__)

_MNT_DETACH = 2


def mount_points_below(directory: str) -> list[str]:
    """Mount points at or below `directory` (deepest first), from /proc/self/mountinfo."""
    prefix = os.path.realpath(directory)
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            point = _unescape(fields[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def detach(point: str) -> bool:
    """Lazily unmount `point` (as `umount -l`); False when the kernel refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(point.encode(), _MNT_DETACH) != 0:
        logger.warning("cannot unmount %s: %s", point, os.strerror(ctypes.get_errno()))
        return False
    return True


def detach_below(directory: str) -> None:
    """Detach everything mounted at or below `directory`."""
    for point in mount_points_below(directory):
        detach(point)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and field[index + 1:index + 4].isdigit():
            out.append(chr(int(field[index + 1:index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)
