"""Who is calling, for the handlers that care: the workload guard of the current RPC.

The workload port (`_workload.py`) authenticates a call's ServiceAccount token and sets
`WORKLOAD` for the task that runs the handler (grpc.aio runs every RPC in a task of its own,
and tasks a handler starts copy its context, so the Pipeline's per-call tasks see it too).
On the client port, where callers are identified by their certificates, it stays None.

Handlers read it for the few decisions that depend on the caller beyond the policy check the
port makes before they run: a lease granted by a workload records its namespace
(`_lease.py`), Unseal skips the operator-certificate rule for a workload the policy already
admitted (`_secrets.py`), and each pipelined call is checked like the RPC it stands for
(`_pipeline.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from coordinator.runtime.tokenreview import WorkloadIdentity

from ._errors import Code, ServiceError
from ._policy import Policy, access_of


@dataclass(frozen=True)
class Guard:
    """A verified workload identity and the policy that scopes it."""

    who: WorkloadIdentity
    policy: Policy
    lease_owner: Callable[[int], str | None]
    on_denied: Callable[[str, str], None]

    def check(self, verb: str, request: Any) -> None:  # noqa: ANN401 (a generated message)
        """PERMISSION_DENIED (counted) unless the policy lets `who` make this call."""
        access = access_of(verb, request)
        denial = self.policy.decide(self.who, access, self.lease_owner)
        if denial is not None:
            self.on_denied(verb, denial.reason)
            raise ServiceError(Code.PERMISSION_DENIED, denial.message)


WORKLOAD: ContextVar[Guard | None] = ContextVar("concord_workload", default=None)


def workload() -> Guard | None:
    """The current call's workload guard; None for a cluster client (client port)."""
    return WORKLOAD.get()
