"""Concord's client library: asyncio `Client` (leader discovery, safe retries, locks and
leaderships as context managers whose handles say at once when they are lost, deadlines on
every blocking call, elections, watches, per-member key management), and `SyncClient`, the
same for synchronous code (a private event loop in a background thread). The CLI, the sidecar
and the operator all go through it."""

from ._client import Client as Client
from ._client import ConcordError as ConcordError
from ._client import Leadership as Leadership
from ._client import LeaseInfo as LeaseInfo
from ._client import Lock as Lock
from ._holds import DeadlineExceeded as DeadlineExceeded
from ._holds import Held as Held
from ._holds import HeldLeadership as HeldLeadership
from ._holds import HeldLock as HeldLock
from ._holds import LockLost as LockLost
from ._sync import SyncClient as SyncClient
from ._sync import SyncHeld as SyncHeld

__all__ = [
    "Client",
    "ConcordError",
    "DeadlineExceeded",
    "Held",
    "HeldLeadership",
    "HeldLock",
    "Leadership",
    "LeaseInfo",
    "Lock",
    "LockLost",
    "SyncClient",
    "SyncHeld",
]
