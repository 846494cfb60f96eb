"""Errors the core raises to its caller; each says what to do next."""

from __future__ import annotations


class RaftError(Exception):
    """Base of everything the core raises on purpose."""


class NotLeaderError(RaftError):
    """Only the leader accepts this; `leader` is the one we know of (0 if none)."""

    def __init__(self, leader: int, what: str = "request") -> None:
        hint = f"leader is {leader}" if leader else "no leader is known; retry after an election"
        super().__init__(f"not the leader, cannot serve {what}: {hint}")
        self.leader = leader


class ProposalDroppedError(RaftError):
    """The leader refused a proposal for a transient reason (e.g. a leadership transfer)."""


class ConfChangeError(RaftError):
    """A membership change that is not allowed now or ever; the message says which."""
