"""Concord's Raft core: a pure, deterministic state machine stepped by its caller.

Nothing in this package reads a clock, touches a socket or a file, starts a thread or draws
from a global random source (a test enforces the import ban). Time arrives as `tick()`,
randomness from `Config.rng`, messages through `step()`; what must happen next comes back as
a `Ready`. The asyncio runtime and the deterministic simulator drive the very same object.
"""

from ._confchange import ConfChange as ConfChange
from ._confchange import ConfChangeType as ConfChangeType
from ._confchange import apply_change as apply_change
from ._config import Config as Config
from ._config import Logger as Logger
from ._config import NullLogger as NullLogger
from ._config import RandomSource as RandomSource
from ._node import PeerStatus as PeerStatus
from ._node import RawNode as RawNode
from ._node import Ready as Ready
from ._node import Status as Status
from ._progress import ProgressState as ProgressState
from .errors import ConfChangeError as ConfChangeError
from .errors import NotLeaderError as NotLeaderError
from .errors import ProposalDroppedError as ProposalDroppedError
from .errors import RaftError as RaftError
from .messages import NONE as NONE
from .messages import ConfState as ConfState
from .messages import Entry as Entry
from .messages import EntryKind as EntryKind
from .messages import HardState as HardState
from .messages import Message as Message
from .messages import MessageType as MessageType
from .messages import ReadState as ReadState
from .messages import Role as Role
from .messages import Snapshot as Snapshot
from .messages import SnapshotData as SnapshotData
from .messages import SnapshotMeta as SnapshotMeta
from .messages import SoftState as SoftState
from .sessions import SessionCheck as SessionCheck
from .sessions import SessionTable as SessionTable
from .sessions import SessionVerdict as SessionVerdict
from .storage import CompactedError as CompactedError
from .storage import LogStorage as LogStorage
from .storage import MemoryStorage as MemoryStorage
from .storage import UnavailableError as UnavailableError

__all__ = [
    "NONE",
    "CompactedError",
    "ConfChange",
    "ConfChangeError",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryKind",
    "HardState",
    "LogStorage",
    "Logger",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotLeaderError",
    "NullLogger",
    "PeerStatus",
    "ProgressState",
    "ProposalDroppedError",
    "RaftError",
    "RandomSource",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "SessionCheck",
    "SessionTable",
    "SessionVerdict",
    "Snapshot",
    "SnapshotData",
    "SnapshotMeta",
    "SoftState",
    "Status",
    "UnavailableError",
    "apply_change",
]
