"""Proposals on their way into the member core, and retries that join one already there.

A request retried with the same session (client id, seq) and the same command while its first
attempt's entry is still undecided waits for that entry instead of proposing another. Under
overload a client's attempt times out while its entry waits in a long batch, and every retry
used to add one more entry: answered as a duplicate at apply, but replicated, fsynced and
applied all the same, so the retries of a burst grew the very queue they waited in. Only
requests with a session are joined (without one a repeat is a new request), and only while
the first is undecided: once its `Completed` record settles it, a later retry is proposed and
answered from the session's saved result at apply, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coordinator.fsm import Applied, Command

Retry = tuple[int, int, Command]
"""(client id, seq, command): what makes a request a retry of another."""

_Session = tuple[int, int]
"""(client id, seq). The books are keyed by it, and the command compared only when a session
is found: hashing a command hashes every field of it (a txn's compares and operations) each
time, which cost a compare-and-swap more than the rest of its way through this module."""


@dataclass(slots=True)
class Proposal:
    data: bytes
    future: asyncio.Future[Applied]
    retry: Retry | None
    """Set for a request with a session (only those are retried with the same identity)."""


class RetryJoins:
    """Which undecided proposal each session request is, and the retries waiting on it."""

    def __init__(self) -> None:
        self._in_flight: dict[_Session, tuple[Command, int]] = {}
        """A session request's session -> its command and the core request id of its
        undecided proposal."""
        self._joined: dict[int, tuple[_Session, list[asyncio.Future[Applied]]]] = {}
        """Core request id of a session request -> its session and the retries that joined."""

    def propose(
        self, batch: Sequence[Proposal], propose_batch: Callable[[list[bytes]], list[int]]
    ) -> list[tuple[int, Proposal]]:
        """Propose `batch` through `propose_batch`, except the retries of a request undecided
        (proposed in an earlier turn, or earlier in this batch): they join it. Returns the
        core request id of each proposal made. The same session with another command is no
        retry: it is proposed (the state machine refuses it, as a seq used twice), and
        nothing joins it."""
        fresh: list[Proposal] = []
        joining: dict[_Session, tuple[Proposal, list[asyncio.Future[Applied]]]] = {}
        for p in batch:
            retry = p.retry
            if retry is None:
                fresh.append(p)
                continue
            session = (retry[0], retry[1])
            known = self._in_flight.get(session)
            if known is not None:
                if known[0] == retry[2]:
                    self._joined[known[1]][1].append(p.future)
                    continue
            else:
                first = joining.get(session)
                if first is None:
                    joining[session] = (p, [])
                elif first[0].retry == retry:
                    first[1].append(p.future)
                    continue
            fresh.append(p)
        ids = propose_batch([p.data for p in fresh])
        made = list(zip(ids, fresh, strict=True))
        for pid, p in made:
            retry = p.retry
            if retry is None:
                continue
            session = (retry[0], retry[1])
            first = joining.get(session)
            if first is not None and first[0] is p:
                self._in_flight[session] = (retry[2], pid)
                self._joined[pid] = (session, first[1])
        return made

    def settled(self, pid: int) -> Sequence[asyncio.Future[Applied]]:
        """Core request `pid` is decided: the retries that joined it, to settle the same way."""
        joined = self._joined.pop(pid, None)
        if joined is None:
            return ()
        session, waiting = joined
        del self._in_flight[session]
        return waiting

    def drop_all(self) -> list[asyncio.Future[Applied]]:
        """Forget everything (the loop stops): every retry still waiting, to fail."""
        waiting = [f for _, joined in self._joined.values() for f in joined]
        self._joined.clear()
        self._in_flight.clear()
        return waiting
