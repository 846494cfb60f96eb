"""Lease renewals of every KeepAlive stream of a member, confirmed together.

The leader's lessor (`coordinator.fsm.lessor`) renews in memory, but only once a read barrier
requested after the renewal arrived has confirmed that this member still leads (its rule b).
Barriers are batched: renewals that arrive while one barrier is in flight wait for the next
one, and that one confirms them all, so a member renewing thousands of leases takes a barrier
per round trip, not per renewal. Nothing is written to the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.fsm import Renewal

from ._core import Core
from ._errors import ServiceError, unavailable
from ._rpc import deadline_error

_NOT_SERVING_WAIT_S = 0.02
"""Poll period while this member leads but its lessor does not serve yet (it starts at the
loop's next turn after the leader's first own entry applied)."""


@dataclass(slots=True)
class _Ask:
    """Renewals that arrived together (one keep-alive message's), decided together."""

    leases: Sequence[int]
    arrived_ms: int
    future: asyncio.Future[list[Renewal]]


class Renewals:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._waiting: list[_Ask] = []
        """Arrived, not yet covered by a barrier."""
        self._runner: asyncio.Task[None] | None = None

    def ask(self, leases: Sequence[int]) -> asyncio.Future[list[Renewal]]:
        """Renew `leases` (arrived now): resolves with the lessor's verdicts, one per lease in
        order, or fails with a ServiceError (not the leader: a redirect; no quorum; the
        deadline). One future per message, not per lease: a message carries hundreds, and a
        future, its callback and its answer per lease were most of the leader's CPU."""
        view = self._core.view
        fut: asyncio.Future[list[Renewal]] = asyncio.get_running_loop().create_future()
        self._core.lease_stats.renewals += len(leases)
        self._waiting.append(_Ask(leases, view.monotonic_ms(), fut))
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
        return fut

    def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()

    async def _run(self) -> None:
        try:
            while self._waiting:
                # One turn of the event loop: what arrived in this turn shares the barrier, and
                # what arrives while it is in flight shares the next. No longer: a client sends
                # its due renewals in one message, and a wait here is added to every renewal.
                await asyncio.sleep(0)
                batch, self._waiting = self._waiting, []
                batch = [a for a in batch if not a.future.done()]
                if batch:
                    await self._confirm(batch)
        finally:
            self._runner = None

    async def _confirm(self, batch: list[_Ask]) -> None:
        """One barrier for the whole batch (all of it arrived before it is requested), then
        the lessor's verdicts."""
        core = self._core
        bound_s = core.cfg.deadline_s
        try:
            async with asyncio.timeout(bound_s):
                view = core.view
                leader = view.leader
                heard = view.last_heard_s(leader) if leader else None
                if leader != core.id and heard is not None and heard <= view.election_timeout_s:
                    # A follower that hears from the leader sends the stream there at once
                    # (a barrier would only confirm that it does not lead).
                    raise core.redirect(leader)
                core.lease_stats.barriers += 1
                await core.require_leader()
                asks = [(a.leases, a.arrived_ms) for a in batch]
                while True:
                    confirmed = view.renew_leases(asks)
                    if confirmed is None:
                        raise unavailable("leadership moved while renewing; retry")
                    verdicts = confirmed
                    if verdicts[0] is not Renewal.NOT_SERVING:
                        break
                    # Leading, but the lessor starts at the loop's next turn (rule a). The
                    # barrier already confirmed the batch; only the lessor is awaited.
                    await asyncio.sleep(_NOT_SERVING_WAIT_S)
        except TimeoutError:
            self._fail(batch, deadline_error(bound_s))
        except ServiceError as err:
            self._fail(batch, err)
        except asyncio.CancelledError:
            self._fail(batch, unavailable("this member is shutting down; retry"))
            raise
        else:
            start = 0
            for ask in batch:
                end = start + len(ask.leases)
                if not ask.future.done():
                    ask.future.set_result(verdicts[start:end])
                start = end

    @staticmethod
    def _fail(batch: list[_Ask], err: ServiceError) -> None:
        for ask in batch:
            if not ask.future.done():
                ask.future.set_exception(err)
