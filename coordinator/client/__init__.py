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
from ._client import SealFailed as SealFailed
from ._holds import DeadlineExceeded as DeadlineExceeded
from ._holds import Held as Held
from ._holds import HeldLeadership as HeldLeadership
from ._holds import HeldLock as HeldLock
from ._holds import LockLost as LockLost
from ._secrets import ReEncrypted as ReEncrypted
from ._secrets import SealedCheck as SealedCheck
from ._secrets import SealingKeyInfo as SealingKeyInfo
from ._secrets import SealingKeys as SealingKeys
from ._secrets import Unsealed as Unsealed
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
    "ReEncrypted",
    "SealFailed",
    "SealedCheck",
    "SealingKeyInfo",
    "SealingKeys",
    "SyncClient",
    "SyncHeld",
    "Unsealed",
]
