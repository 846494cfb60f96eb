"""The member core: one member's decisions around its Raft node, synchronous and I/O-free.

Between the pure Raft core (`coordinator.raft`), the replicated state machine
(`coordinator.fsm`) and the runtime that does the I/O (`coordinator.runtime`): `MemberCore`
keeps a member's books (proposals and reads waiting for their outcome, snapshot and
compaction policy, lease-expiry timing, data key rotation steps, the applied configuration,
the leader it knows of) and `ready` orders what a Ready demands, once, for every driver.
Like `coordinator.raft` it reads no clock, socket, file or random source of its own
(tests/test_layout.py checks the imports); the asyncio loop and the simulator drive it.
"""

from .lease_reads import ReadMode as ReadMode
from .member import MemberCore as MemberCore
from .memory import MemoryLog as MemoryLog
from .ready import Applier as Applier
from .ready import Transport as Transport
from .ready import Wal as Wal
from .ready import finish as finish
from .ready import handle_ready as handle_ready
from .ready import persist as persist
from .ready import send_early as send_early
from .records import AppliedBatch as AppliedBatch
from .records import Completed as Completed
from .records import CoreConfig as CoreConfig
from .records import DiskWork as DiskWork
from .records import DurableLog as DurableLog
from .records import KeyRotation as KeyRotation
from .records import KeySwitch as KeySwitch
from .records import LeaderChanged as LeaderChanged
from .records import Machine as Machine
from .records import Notice as Notice
from .records import ProposalLostError as ProposalLostError
from .records import Restored as Restored
from .records import SnapshotJob as SnapshotJob
from .records import SnapshotWrite as SnapshotWrite
from .records import StoppedError as StoppedError
