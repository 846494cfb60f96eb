"""Concord's client library: asyncio `Client` (leader discovery, safe retries, locks as
context managers). The CLI, the sidecar and the operator all go through it."""

from ._client import Client as Client
from ._client import ConcordError as ConcordError
from ._client import Lock as Lock

__all__ = ["Client", "ConcordError", "Lock"]
