"""Free loopback ports for tests that start a stack on ports of their own choosing.

A stack started on Batch port ``p`` also serves Key Vault and the management plane on ``p + 1``,
so a Batch port is only handed out when the port after it is free as well, and every port handed
out in one call is distinct (all of them are held open together while they are chosen).
"""

from __future__ import annotations

import socket
from contextlib import ExitStack


def _bound(stack: ExitStack, port: int) -> bool:
    listener = stack.enter_context(socket.socket())
    try:
        listener.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def free_stack_ports(attempts: int = 50) -> tuple[int, int]:
    """``(batch_port, blob_port)``: a Batch port whose successor is free too, and a distinct Blob port."""
    for _ in range(attempts):
        with ExitStack() as held:
            batch = held.enter_context(socket.socket())
            batch.bind(("127.0.0.1", 0))
            batch_port = batch.getsockname()[1]
            if batch_port >= 65535 or not _bound(held, batch_port + 1):
                continue
            blob = held.enter_context(socket.socket())
            blob.bind(("127.0.0.1", 0))
            return batch_port, blob.getsockname()[1]
    raise RuntimeError(f"no free pair of loopback ports after {attempts} attempts")
