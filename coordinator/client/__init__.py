"""Concord's client library: asyncio `Client` (leader discovery, safe retries, locks and
leaderships as context managers whose handles say at once when they are lost, deadlines on
every blocking call, elections, watches, per-member key management), and `SyncClient`, the
same for synchronous code (a private event loop in a background thread). The CLI, the sidecar
and the operator all go through it.

Build a client from endpoints and credentials, from a TLS directory (`Client.from_tls_dir`)
or from the environment (`Client.from_env`: CONCORD_ENDPOINTS, CONCORD_TLS_DIR). Every
failure is a `ConcordError` of its status's own type (`NotFound`, `Unavailable`...); results
are frozen dataclasses, never protobuf messages.
"""

from ._client import Client as Client
from ._config import check_endpoint as check_endpoint
from ._config import credentials_from_tls_dir as credentials_from_tls_dir
from ._config import parse_endpoints as parse_endpoints
from ._errors import Aborted as Aborted
from ._errors import AlreadyExists as AlreadyExists
from ._errors import Cancelled as Cancelled
from ._errors import ConcordError as ConcordError
from ._errors import DataLoss as DataLoss
from ._errors import DeadlineExceeded as DeadlineExceeded
from ._errors import FailedPrecondition as FailedPrecondition
from ._errors import Internal as Internal
from ._errors import InvalidArgument as InvalidArgument
from ._errors import NotFound as NotFound
from ._errors import OutOfRange as OutOfRange
from ._errors import PermissionDenied as PermissionDenied
from ._errors import ResourceExhausted as ResourceExhausted
from ._errors import Unauthenticated as Unauthenticated
from ._errors import Unavailable as Unavailable
from ._errors import Unimplemented as Unimplemented
from ._errors import Unknown as Unknown
from ._errors import error_for as error_for
from ._holds import Held as Held
from ._holds import HeldLeadership as HeldLeadership
from ._holds import HeldLock as HeldLock
from ._holds import LockBusy as LockBusy
from ._holds import LockLost as LockLost
from ._keepalive import KeptLease as KeptLease
from ._kv import prefix_end as prefix_end
from ._secrets import ReEncrypted as ReEncrypted
from ._secrets import SealedCheck as SealedCheck
from ._secrets import SealFailed as SealFailed
from ._secrets import SealingKeyInfo as SealingKeyInfo
from ._secrets import SealingKeys as SealingKeys
from ._secrets import Unsealed as Unsealed
from ._sync import SyncClient as SyncClient
from ._sync import SyncHeld as SyncHeld
from ._sync import SyncKeptLease as SyncKeptLease
from ._types import AutolockChange as AutolockChange
from ._types import AutolockStatus as AutolockStatus
from ._types import Compare as Compare
from ._types import DataKeyRotation as DataKeyRotation
from ._types import Delete as Delete
from ._types import Event as Event
from ._types import EventType as EventType
from ._types import Get as Get
from ._types import JoinTokenInfo as JoinTokenInfo
from ._types import KeyValue as KeyValue
from ._types import Leadership as Leadership
from ._types import LeaseInfo as LeaseInfo
from ._types import Lock as Lock
from ._types import LockHolder as LockHolder
from ._types import LockInfo as LockInfo
from ._types import Member as Member
from ._types import MemberList as MemberList
from ._types import NewJoinToken as NewJoinToken
from ._types import Put as Put
from ._types import SequenceInfo as SequenceInfo
from ._types import Status as Status
from ._types import TxnOp as TxnOp
from ._types import TxnOpResult as TxnOpResult
from ._types import TxnResult as TxnResult
from ._types import UnlockKeyRotation as UnlockKeyRotation

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AutolockChange",
    "AutolockStatus",
    "Cancelled",
    "Client",
    "Compare",
    "ConcordError",
    "DataKeyRotation",
    "DataLoss",
    "DeadlineExceeded",
    "Delete",
    "Event",
    "EventType",
    "FailedPrecondition",
    "Get",
    "Held",
    "HeldLeadership",
    "HeldLock",
    "Internal",
    "InvalidArgument",
    "JoinTokenInfo",
    "KeptLease",
    "KeyValue",
    "Leadership",
    "LeaseInfo",
    "Lock",
    "LockBusy",
    "LockHolder",
    "LockInfo",
    "LockLost",
    "Member",
    "MemberList",
    "NewJoinToken",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Put",
    "ReEncrypted",
    "ResourceExhausted",
    "SealFailed",
    "SealedCheck",
    "SealingKeyInfo",
    "SealingKeys",
    "SequenceInfo",
    "Status",
    "SyncClient",
    "SyncHeld",
    "SyncKeptLease",
    "TxnOp",
    "TxnOpResult",
    "TxnResult",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "UnlockKeyRotation",
    "Unsealed",
    "check_endpoint",
    "credentials_from_tls_dir",
    "error_for",
    "parse_endpoints",
    "prefix_end",
]
