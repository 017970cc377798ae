"""The account's core quotas, as the Batch service enforces them when it allocates nodes.

A pool may ask for any number of nodes; allocation stops at the quota and the pool reports a
resize error (AccountCoreQuotaReached / AccountLowPriorityCoreQuotaReached), as on Azure,
whose default quotas these are (at most 900 dedicated and 100 low-priority cores).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_CORES_IN_SIZE = re.compile(r"^(?:standard|basic)_[a-z]+?(\d+)", re.IGNORECASE)


@dataclass
class Quotas:
    dedicated_cores: int = 900
    low_priority_cores: int = 100

    def cores(self, dedicated: bool) -> int:
        return self.dedicated_cores if dedicated else self.low_priority_cores


def cores_of(vm_size: str) -> int:
    """The vCPUs of a VM size, read from its name as Azure names them (standard_d2s_v3: 2)."""
    match = _CORES_IN_SIZE.match(vm_size)
    return max(1, int(match.group(1))) if match else 1


def quota_error(dedicated: bool, limit: int) -> dict:
    """The resize error of a pool whose allocation stopped at the account's core quota."""
    if dedicated:
        code, what = "AccountCoreQuotaReached", "core quota"
    else:
        code, what = "AccountLowPriorityCoreQuotaReached", "low priority core quota"
    return {"code": code, "message": f"The specified account has reached {what}",
            "values": [{"name": "CoreQuota", "value": str(limit)}]}
