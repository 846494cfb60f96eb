"""Concord's client library: asyncio `Client` (leader discovery, safe retries, locks as
context managers, elections, watches, per-member key management), and `SyncClient`, the same
for synchronous code (a private event loop in a background thread). The CLI, the sidecar and
the operator all go through it."""

from ._client import Client as Client
from ._client import ConcordError as ConcordError
from ._client import Leadership as Leadership
from ._client import LeaseInfo as LeaseInfo
from ._client import Lock as Lock
from ._sync import SyncClient as SyncClient

__all__ = ["Client", "ConcordError", "Leadership", "LeaseInfo", "Lock", "SyncClient"]
