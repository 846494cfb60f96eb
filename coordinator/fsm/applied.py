"""What `StateMachine.apply` returns: `Applied`, with the effects of an entry on waiting
clients (`LockGranted`, `LeaderElected`, `LeaseExpired`, `LeaseRevoked`; see `machine.py`'s
module docstring on wake-ups)."""

from __future__ import annotations

from dataclasses import dataclass

from .commands import Command
from .errors import FsmError
from .locks import Grant
from .results import Result


@dataclass(frozen=True, slots=True)
class LockGranted:
    """A waiter got the lock because of someone else's release, an expiry or a lock-delay's end."""

    name: str
    lease: int
    waiter_id: int
    token: int


@dataclass(frozen=True, slots=True)
class LeaderElected:
    """A waiting candidate became leader (the leader before it resigned or expired)."""

    election: str
    lease: int
    token: int


@dataclass(frozen=True, slots=True)
class LeaseExpired:
    """ExpireLeases ended this lease: its keys are gone, its locks and elections released."""

    id: int


@dataclass(frozen=True, slots=True)
class LeaseRevoked:
    """LeaseRevoke ended this lease (same clean-up as expiry, but no lock-delay)."""

    id: int


Effect = LockGranted | LeaderElected | LeaseExpired | LeaseRevoked


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of applying one entry."""

    index: int
    term: int
    client_id: int = 0
    seq: int = 0
    command: Command | None = None
    """The decoded command; None for a leader no-op, a CONF entry or undecodable data."""
    result: Result | FsmError | None = None
    """The command's result or rejection (INVALID_ARGUMENT for undecodable data); None for a
    leader no-op or a CONF entry."""
    effects: tuple[Effect, ...] = ()
    """Wake-ups for requests other than this one, in the order they happened."""
    duplicate: bool = False
    """True if the session table answered (a retry or a stale request): nothing changed."""


def _lock_granted(g: Grant) -> LockGranted:
    return LockGranted(g.name, g.lease, g.waiter_id, g.token)


def _leader_elected(g: Grant) -> LeaderElected:
    return LeaderElected(g.name, g.lease, g.token)
