"""Lease renewals of every KeepAlive stream of a member, confirmed together.

The leader's lessor (`coordinator.fsm.lessor`) renews in memory, but only once a read barrier
requested after the renewal arrived has confirmed that this member still leads (its rule b).
Barriers are batched: renewals that arrive together share one, so a member renewing thousands
of leases takes a barrier per round trip, not per renewal. Nothing is written to the log.

Up to `_BARRIERS_MAX` batches are confirmed at once; renewals that arrive while that many are
in flight wait, and share the next. Why not one at a time: a renewal arriving just after a
barrier was asked for then waited for that barrier's round trip before its own began. Under
a burst of lock acquisitions a round trip took up to a second or more, so renewals waited
twice that, all of it out of their TTL, and a leader change on top of it lost leases.
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


_BARRIERS_MAX = 2
"""Batches confirmed at once at most (each takes a heartbeat round of its own)."""


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
        self._confirming: set[asyncio.Task[None]] = set()
        """Batches whose barrier is in flight (at most `_BARRIERS_MAX`)."""

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
        for task in list(self._confirming):
            task.cancel()

    async def _run(self) -> None:
        try:
            while self._waiting:
                # One turn of the event loop: what arrived in this turn shares the barrier, and
                # what arrives while `_BARRIERS_MAX` are in flight shares the next. No longer: a
                # client sends its due renewals in one message, and a wait here is added to
                # every renewal.
                await asyncio.sleep(0)
                while len(self._confirming) >= _BARRIERS_MAX:
                    await asyncio.wait(self._confirming, return_when=asyncio.FIRST_COMPLETED)
                batch, self._waiting = self._waiting, []
                batch = [a for a in batch if not a.future.done()]
                if batch:
                    task = asyncio.ensure_future(self._confirm(batch))
                    self._confirming.add(task)
                    task.add_done_callback(self._confirming.discard)
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
                asks = [(a.leases, a.arrived_ms) for a in batch]
                while True:
                    # A member that knows another leader (a follower, or a leader deposed
                    # while the batch waited) sends the stream there at once: the client
                    # renews nowhere else, and its TTL runs while it waits here.
                    if view.leader == core.id:
                        core.lease_stats.barriers += 1
                    await core.confirm_leading()
                    confirmed = view.renew_leases(asks)
                    while confirmed is not None and confirmed[0] is Renewal.NOT_SERVING:
                        # Leading, but the lessor starts at the loop's next turn (rule a). The
                        # barrier already confirmed the batch; only the lessor is awaited.
                        await asyncio.sleep(_NOT_SERVING_WAIT_S)
                        confirmed = view.renew_leases(asks)
                    if confirmed is not None:
                        break
                    # Deposed since the barrier: look again (a redirect, once the new leader
                    # is known).
                verdicts = confirmed
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
