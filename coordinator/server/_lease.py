"""concord.v1.Lease: Grant, KeepAlive (a bidirectional stream), Revoke, TimeToLive.

KeepAlive carries every lease of a client on one stream: each request names a lease (`id`) or
several (`ids`), each renewal is answered (id and TTL) as soon as it is decided, in any order,
and requests are pipelined (the stream reads on while earlier ones wait). Renewals sent in
`ids` are answered together: one response carries every answer decided by the time it is
written (`renewed`). Why: a gRPC message costs the member's event loop far more than a lease
id, and a client keeping ten thousand leases renews three thousand a second; one message per
renewal each way kept the answers seconds behind their TTL. A renewal writes nothing to the
log: the leader's lessor renews it in memory once a batched read barrier confirmed the
leadership (`_renewals.py`, `coordinator.fsm.lessor`). A lease that no longer exists is
answered with ttl_ms 0 (the client has lost everything that hung on it), and the stream goes on
for the others; a renewal racing an expiry already proposed is answered so once the expiry
applies. A member that does not lead ends the stream with UNAVAILABLE and the leader in
`concord-leader`; keep-alives go to the leader. Each renewal is bounded by the service's
deadline.

TimeToLive is answered by the leader from its lessor (a follower redirects to it): only the
leader knows the renewals. Until the new leader's lessor serves, the replicated table answers
(a full TTL after a leader change either way).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import (
    LeaseGrant,
    LeaseResult,
    LeaseRevoke,
    OwnedLeaseGrant,
    Renewal,
    RevisionResult,
)

from . import _validate as v
from ._caller import workload
from ._core import Core
from ._errors import unavailable
from ._hub import first_done
from ._renewals import Renewals
from ._rpc import Call, Servicer, deadline_error, streaming, unary

_RENEWED_MAX = 4096
"""At most this many answers in one response (it stays a few tens of kilobytes)."""


@dataclass(frozen=True, slots=True)
class _Verdicts:
    """Answers decided together: (lease, TTL ms or 0 when it has ended), in any order."""

    answers: list[tuple[int, int]]
    batched: bool
    """Asked in a request's `ids`: answered in a response's `renewed`."""


_Answer = _Verdicts | Exception | None


class LeaseService(Servicer):
    def __init__(self, core: Core) -> None:
        super().__init__(core.cfg.deadline_s)
        self.core = core
        self.renewals = Renewals(core)

    @unary
    async def Grant(self, request: pb.LeaseGrantRequest, call: Call) -> pb.LeaseGrantResponse:
        ttl_ms, lease_id = v.ttl_ms(request.ttl_ms), v.lease_id(request.id, required=False)
        guard = workload()
        # A workload's lease records its namespace, so no other namespace can use it.
        cmd: LeaseGrant | OwnedLeaseGrant = (
            LeaseGrant(ttl_ms, lease_id)
            if guard is None
            else OwnedLeaseGrant(ttl_ms, lease_id, guard.who.namespace)
        )
        applied = await self.core.propose(cmd, v.session(request.session))
        res = self.core.expect(applied, LeaseResult)
        return pb.LeaseGrantResponse(
            header=self.core.header(None, applied.index), id=res.id, ttl_ms=res.ttl_ms
        )

    @streaming
    async def KeepAlive(
        self, request: AsyncIterator[pb.LeaseKeepAliveRequest], call: Call
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        self.core.lease_stats.streams += 1
        answers: asyncio.Queue[_Answer] = asyncio.Queue()
        pending = 0
        """Answers owed and not yet queued: one per message's renewals (decided together),
        plus one per renewal that raced an expiry (answered once the expiry applied)."""
        done_reading = False
        racing: set[asyncio.Task[None]] = set()

        def answer(item: _Verdicts | Exception | None) -> None:
            # None: an owed answer that turned out to hold nothing (every renewal of the
            # message raced an expiry, and each of those is owed on its own).
            nonlocal pending
            pending -= 1
            if item is not None:
                answers.put_nowait(item)
            if done_reading and not pending:
                answers.put_nowait(None)

        def settle(
            leases: Sequence[int], batched: bool, decided: asyncio.Future[list[Renewal]]
        ) -> None:
            # A callback, not a task: a message's renewals are settled in one go.
            nonlocal pending
            if decided.cancelled():
                return
            err = decided.exception()
            if err is not None:
                answer(err if isinstance(err, Exception) else unavailable(str(err)))
                return
            ttl_of = self.core.view.lessor.ttl_ms
            out: list[tuple[int, int]] = []
            for lease, verdict in zip(leases, decided.result(), strict=True):
                if verdict is Renewal.RENEWED:
                    out.append((lease, ttl_of(lease)))
                elif verdict is Renewal.UNKNOWN:
                    out.append((lease, 0))  # the lease has ended
                elif verdict is Renewal.EXPIRING:
                    pending += 1
                    task = asyncio.ensure_future(self._after_expiry(lease, batched, answer))
                    racing.add(task)
                    task.add_done_callback(racing.discard)
                else:  # NOT_SERVING is never a batch's verdict (it waits or fails instead)
                    answer(unavailable("this member does not serve renewals now; retry"))
                    return
            answer(_Verdicts(out, batched) if out else None)

        def ask(leases: Sequence[int], batched: bool) -> None:
            nonlocal pending
            pending += 1
            self.renewals.ask(leases).add_done_callback(functools.partial(settle, leases, batched))

        async def read() -> None:
            nonlocal done_reading
            try:
                async for message in request:
                    self.core.lease_stats.messages += 1
                    if message.ids:
                        leases = v.lease_ids(message.ids, "ids")
                        if message.id:
                            ask((v.lease_id(message.id, "id"),), False)
                        ask(leases, True)
                    else:
                        ask((v.lease_id(message.id, "id"),), False)
            except Exception as exc:
                answers.put_nowait(exc)
                return
            done_reading = True  # the client is done writing: answer what it sent, then end
            if not pending:
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        held: list[_Answer] = []
        """An answer taken from the queue while filling a response, that does not go in it
        (or the part of one that did not fit)."""
        try:
            while (item := held.pop() if held else await answers.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                if not item.batched:
                    for lease, ttl_ms in item.answers:
                        yield self._response(lease, ttl_ms)
                    continue
                # Every batched answer already decided goes in this one response.
                renewed: list[tuple[int, int]] = []
                while True:
                    room = _RENEWED_MAX - len(renewed)
                    renewed += item.answers[:room]
                    if len(item.answers) > room:
                        held.append(_Verdicts(item.answers[room:], True))
                        break
                    if answers.empty():
                        break
                    nxt = answers.get_nowait()
                    if not isinstance(nxt, _Verdicts) or not nxt.batched:
                        held.append(nxt)
                        break
                    item = nxt
                response = pb.LeaseKeepAliveResponse(header=self.core.header())
                add = response.renewed.add  # a third of building a LeaseRenewed and copying it
                for lease, ttl_ms in renewed:
                    add(id=lease, ttl_ms=ttl_ms)
                yield response
        finally:
            reader.cancel()
            for task in list(racing):
                task.cancel()

    def _response(self, lease: int, ttl_ms: int) -> pb.LeaseKeepAliveResponse:
        return pb.LeaseKeepAliveResponse(header=self.core.header(), id=lease, ttl_ms=ttl_ms)

    async def _after_expiry(
        self, lease: int, batched: bool, answer: Callable[[_Verdicts | Exception | None], None]
    ) -> None:
        """A renewal that raced an expiry on its way: NOT_FOUND once it applied."""
        try:
            await self._expiry_applied(lease)
        except TimeoutError:
            answer(deadline_error(self.deadline_s))
        except Exception as exc:
            answer(exc)
        else:
            answer(_Verdicts([(lease, 0)], batched))

    async def _expiry_applied(self, lease: int) -> None:
        """Wait until the expiry naming `lease` applied (the renewal lost the race: NOT_FOUND),
        or the lessor stopped serving (leadership moved; the lease may live on: retry there)."""
        lessor, hub = self.core.view.lessor, self.core.hub
        async with asyncio.timeout(self.deadline_s):
            while lessor.expiring(lease):
                change = hub.leader_change()
                applied: asyncio.Future[None] = asyncio.ensure_future(
                    hub.applied_since(hub.generation)
                )
                try:
                    await first_done(applied, change)
                finally:
                    applied.cancel()
        if self.core.fsm.lease_owner(lease) is not None:
            raise unavailable(
                f"lease {lease} was being expired when leadership moved; retry the renewal at "
                "the new leader"
            )

    @unary
    async def Revoke(self, request: pb.LeaseRevokeRequest, call: Call) -> pb.LeaseRevokeResponse:
        cmd = LeaseRevoke(v.lease_id(request.id, "id"))
        applied = await self.core.propose(cmd, v.session(request.session))
        res = self.core.expect(applied, RevisionResult)
        return pb.LeaseRevokeResponse(header=self.core.header(res.revision, applied.index))

    @unary
    async def TimeToLive(
        self, request: pb.LeaseTimeToLiveRequest, call: Call
    ) -> pb.LeaseTimeToLiveResponse:
        lease = v.lease_id(request.id, "id")
        await self.core.require_leader()  # only the leader knows the renewals: redirect
        now_ms = self.core.view.monotonic_ms()
        life = self.core.view.lessor.remaining(lease, now_ms)
        if life is None:  # the lessor does not serve yet (or the lease is gone): the table
            info = self.core.fsm.lease_ttl(lease)
            ttl_ms, remaining_ms = info.ttl_ms, info.remaining_ms
        else:
            ttl_ms, remaining_ms = life.ttl_ms, life.remaining_ms
        return pb.LeaseTimeToLiveResponse(
            header=self.core.header(), id=lease, ttl_ms=ttl_ms, remaining_ms=remaining_ms
        )
