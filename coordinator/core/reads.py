"""A member's linearizable reads between being asked and being answered.

A read waits in three places in turn: for the next ReadIndex request (the reads asked since
the last Ready share one: `take_next`), for the quorum to confirm that request (`asked`,
then `confirmed`), and for the apply to reach the confirmed read index (`served`). Raft
forgets a request whose term or leader changes (a deposed leader's pending round, a
follower's forwarded request), so `dropped` hands back the reads asked under another
(term, leader) for the caller to fail, rather than leave them waiting forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from coordinator.raft import ReadState

Asker = tuple[int, int]
"""(term, leader) a ReadIndex request was made under."""


class ReadBook:
    __slots__ = ("_asked", "_next", "_waiting")

    def __init__(self) -> None:
        self._next: list[int] = []
        """Read ids asked for since the last Ready."""
        self._asked: dict[int, tuple[Asker, list[int]]] = {}
        """ReadIndex context -> the (term, leader) it was asked under, the read ids it
        confirms."""
        self._waiting: list[tuple[int, int]] = []
        """(read index, read id): confirmed, waiting for the apply to reach the index."""

    def add(self, rid: int) -> None:
        self._next.append(rid)

    def take_next(self) -> list[int]:
        """The reads asked since the last call, for one ReadIndex request."""
        rids, self._next = self._next, []
        return rids

    def asked(self, context: int, under: Asker, rids: list[int]) -> None:
        self._asked[context] = (under, rids)

    def confirmed(self, states: Sequence[ReadState]) -> None:
        """The requests a quorum confirmed (a context this book did not hand out is passed
        over: a leader's own lease renewal, a request already dropped)."""
        for rs in states:
            asked = self._asked.pop(rs.context, None)
            if asked is not None:
                self.at(rs.index, asked[1])

    def at(self, index: int, rids: Iterable[int]) -> None:
        """`rids` may be served once the apply reaches `index`."""
        self._waiting.extend((index, rid) for rid in rids)

    def served(self, applied: int) -> list[tuple[int, int]]:
        """(read id, read index) of the reads the apply has reached, taken out."""
        if not self._waiting:
            return []
        done = [(rid, index) for index, rid in self._waiting if index <= applied]
        if done:
            self._waiting = [(index, rid) for index, rid in self._waiting if index > applied]
        return done

    def dropped(self, now: Asker) -> list[int]:
        """The reads whose request was made under another (term, leader) than `now`, taken
        out."""
        gone = [context for context, (under, _) in self._asked.items() if under != now]
        return [rid for context in gone for rid in self._asked.pop(context)[1]]

    def take_all(self) -> list[int]:
        """Every read id still waiting, taken out (the member is stopping)."""
        ids = [
            *self._next,
            *(rid for _, rids in self._asked.values() for rid in rids),
            *(rid for _, rid in self._waiting),
        ]
        self._next, self._asked, self._waiting = [], {}, []
        return ids
