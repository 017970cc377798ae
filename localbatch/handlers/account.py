"""Account-wide reads with nothing to emulate (applications, usage metrics), and the answer for
Batch operations whose feature localbatch does not emulate."""
from __future__ import annotations

from ..errors import BatchServiceError
from ..http import Call, Handler, Reply
from .common import list_reply


def list_applications(call: Call) -> Reply:
    """No application packages can be uploaded to a local account, so the list is empty."""
    return list_reply(call, [], "applications")


def get_application(call: Call) -> Reply:
    raise BatchServiceError("ApplicationNotFound")


def list_pool_usage_metrics(call: Call) -> Reply:
    """Nothing is billed locally: no usage to report."""
    return list_reply(call, [], "poolusagemetrics", filterable=False)


def not_emulated(operation: str) -> Handler:
    """A handler that answers 501 FeatureNotEmulated naming the SDK operation."""
    def handler(call: Call) -> Reply:
        raise BatchServiceError("FeatureNotEmulated", values={
            "Operation": operation, "Reason": "localbatch does not emulate this operation; see LIMITATIONS in README.md."})
    return handler
