"""Concord's replicated state machine: KV, leases, locks, elections, sequences, members.

Pure and deterministic: `StateMachine.apply(entry)` derives everything, time included, from the
committed log entries (see `machine.py`), so every replica, and every replica restored from a
snapshot, reaches the same state with the same results. It imports the Raft core's
vocabulary (`Entry`, `SessionTable`) and the standard library, nothing else.

- `commands`: the tagged, versioned binary codec of what clients propose (`Envelope`).
- `results`, `errors`: what applying returns (`Result`, or an `FsmError` with a gRPC-shaped
  `ErrorCode`).
- `kv`, `leases`, `locks`, `elections`, `sequences`, `members`, `join_tokens`,
  `sealing_keys`: the parts of the state.
- `machine`: `StateMachine`, `Applied` and the wake-up effects the server acts on.
- `lessor`: the leader's in-memory lease deadlines (renewals without log entries).
"""

from .applied import Applied as Applied
from .applied import Effect as Effect
from .applied import LeaderElected as LeaderElected
from .applied import LeaseExpired as LeaseExpired
from .applied import LeaseRevoked as LeaseRevoked
from .applied import LockGranted as LockGranted
from .commands import ENVELOPE_VERSION as ENVELOPE_VERSION
from .commands import Campaign as Campaign
from .commands import Command as Command
from .commands import CommandDecodeError as CommandDecodeError
from .commands import Compare as Compare
from .commands import CompareOp as CompareOp
from .commands import CompareTarget as CompareTarget
from .commands import Delete as Delete
from .commands import Envelope as Envelope
from .commands import ExpireLeaseIds as ExpireLeaseIds
from .commands import ExpireLeases as ExpireLeases
from .commands import JoinTokenAdd as JoinTokenAdd
from .commands import JoinTokenRevoke as JoinTokenRevoke
from .commands import LeaseGrant as LeaseGrant
from .commands import LeaseKeepAlive as LeaseKeepAlive
from .commands import LeaseRevoke as LeaseRevoke
from .commands import LockAcquire as LockAcquire
from .commands import LockRelease as LockRelease
from .commands import MemberReadmit as MemberReadmit
from .commands import MemberRemove as MemberRemove
from .commands import MemberUpsert as MemberUpsert
from .commands import Noop as Noop
from .commands import OwnedLeaseGrant as OwnedLeaseGrant
from .commands import Proclaim as Proclaim
from .commands import Put as Put
from .commands import Range as Range
from .commands import Resign as Resign
from .commands import SealingKeyAdd as SealingKeyAdd
from .commands import SequenceCreate as SequenceCreate
from .commands import SequenceNext as SequenceNext
from .commands import Txn as Txn
from .commands import TxnOp as TxnOp
from .elections import LeaderInfo as LeaderInfo
from .errors import ErrorCode as ErrorCode
from .errors import FsmError as FsmError
from .join_tokens import JoinTokenInfo as JoinTokenInfo
from .kv import Event as Event
from .kv import EventKind as EventKind
from .leases import LeaseInfo as LeaseInfo
from .lessor import CLOCK_RATE_BOUND as CLOCK_RATE_BOUND
from .lessor import Lessor as Lessor
from .lessor import Lifetime as Lifetime
from .lessor import Renewal as Renewal
from .locks import Holder as Holder
from .locks import Waiter as Waiter
from .machine import SnapshotDecodeError as SnapshotDecodeError
from .machine import StateMachine as StateMachine
from .members import Member as Member
from .results import AcquireResult as AcquireResult
from .results import DeleteResult as DeleteResult
from .results import ExpireResult as ExpireResult
from .results import KeyValue as KeyValue
from .results import LeaseResult as LeaseResult
from .results import OpResult as OpResult
from .results import PutResult as PutResult
from .results import RangeResult as RangeResult
from .results import ReleaseResult as ReleaseResult
from .results import Result as Result
from .results import RevisionResult as RevisionResult
from .results import SealingKeyResult as SealingKeyResult
from .results import SequenceBlock as SequenceBlock
from .results import SequenceInfo as SequenceInfo
from .results import TxnResult as TxnResult
from .results import decode_outcome as decode_outcome
from .results import encode_outcome as encode_outcome
from .sealing_keys import SealingKey as SealingKey

__all__ = [
    "CLOCK_RATE_BOUND",
    "ENVELOPE_VERSION",
    "AcquireResult",
    "Applied",
    "Campaign",
    "Command",
    "CommandDecodeError",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "Delete",
    "DeleteResult",
    "Effect",
    "Envelope",
    "ErrorCode",
    "Event",
    "EventKind",
    "ExpireLeaseIds",
    "ExpireLeases",
    "ExpireResult",
    "FsmError",
    "Holder",
    "JoinTokenAdd",
    "JoinTokenInfo",
    "JoinTokenRevoke",
    "KeyValue",
    "LeaderElected",
    "LeaderInfo",
    "LeaseExpired",
    "LeaseGrant",
    "LeaseInfo",
    "LeaseKeepAlive",
    "LeaseResult",
    "LeaseRevoke",
    "LeaseRevoked",
    "Lessor",
    "Lifetime",
    "LockAcquire",
    "LockGranted",
    "LockRelease",
    "Member",
    "MemberReadmit",
    "MemberRemove",
    "MemberUpsert",
    "Noop",
    "OpResult",
    "OwnedLeaseGrant",
    "Proclaim",
    "Put",
    "PutResult",
    "Range",
    "RangeResult",
    "ReleaseResult",
    "Renewal",
    "Resign",
    "Result",
    "RevisionResult",
    "SealingKey",
    "SealingKeyAdd",
    "SealingKeyResult",
    "SequenceBlock",
    "SequenceCreate",
    "SequenceInfo",
    "SequenceNext",
    "SnapshotDecodeError",
    "StateMachine",
    "Txn",
    "TxnOp",
    "TxnResult",
    "Waiter",
    "decode_outcome",
    "encode_outcome",
]
