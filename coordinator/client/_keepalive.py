"""One keep-alive stream per client, carrying every lease it keeps alive.

Why one stream. A stream per renewal costs the member an RPC set-up and a task per lease every
TTL/3; a client holding a thousand locks made a thousand. Here a `Client` keeps at most one
KeepAlive stream open, to the member it believes leads, and writes every lease's renewal on
it as it falls due; the member answers each (lease id and TTL, or TTL 0 when the lease has
ended) as soon as it is decided, so renewals are pipelined: many are in flight at once. The
renewals that fall due together go in one message (`ids`) and are answered a response's worth
at a time (`renewed`): at ten thousand leases, a message per renewal each way (three thousand
a second) kept both event loops so busy that answers came back seconds late and leases ran
out of TTL on a stream that never failed. (So a client of this version needs members that
read `ids`: upgrade the members first.)

The schedule does not drift. Each lease remembers when the renewal that was last acknowledged
was SENT; its next renewal is due TTL/3 after that send, not TTL/3 after the answer, so a slow
answer under load does not stretch the interval. The member counts a renewal's new TTL from
when it arrived (`coordinator.fsm.lessor`), never before the client sent it, so
`expires_at` = send time of the last acknowledged renewal (or of the grant) + TTL is the
latest time the client can be sure the lease is alive. A renewal is matched with the oldest
unanswered send of that lease, which can only make `expires_at` earlier than the truth.

Failures. Any end of the stream (the member stopped, a reset: UNAVAILABLE, INTERNAL,
CANCELLED; a redirect to the leader; no quorum; DEADLINE_EXCEEDED; RESOURCE_EXHAUSTED) is
transient: the unanswered renewals are sent again on a new stream, at once to the leader a
redirect names, else to the next endpoint after a short back-off. A stream that has answered
nothing for a renewal interval (TTL/3 of the shortest TTL kept, at least `attempt_timeout_s`)
while renewals are in flight is abandoned the same way, and its member is suspect for a while
(redirects naming it are not followed, and it is passed over while another endpoint is left).
Only the keeper's own give-up counts here, not the client's other calls timing out on that
member: under a burst of lock acquisitions those time out on the busy leader again and again,
and the keeper, turned away by each follower, went from follower to follower for a whole TTL.

Why a renewal interval, not one attempt's timeout. Only the leader renews, so leaving a leader
that is slow but alive never helps: under a burst of ten thousand lock acquisitions the
leader answered renewals a second or two late, the keeper gave up on it after one second,
was sent back to it by every follower and would not go (it had just given up on it), and
resent everything when it came back; thousands of leases ran out of TTL that way, and the
leadership moved under the load. A member that is gone or paused is noticed by the
transport (the channel's keepalive pings, `_transport.py`: about two seconds; the stream
ends) and a deposed or cut-off leader ends the stream itself (a redirect, no quorum); the
silence bound is left for a member whose transport still answers but whose service does
not, and a renewal interval still leaves the lease two intervals to find the new leader.
Nothing grpc raises escapes: the keeper only ever reports a loss.

Loss. A lease is lost when the member answers that it has ended (NOT_FOUND), when the member
refuses its renewals outright (a status no retry can change, e.g. PERMISSION_DENIED: every
lease then in flight on that stream), or when `expires_at` passes with no acknowledged renewal.
Its holders are told at once (callbacks, the `lost` event); the lease is no longer renewed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from coordinator.api.v1 import concord_pb2 as pb

from ._pipe import CallFailed
from ._transport import Failure

if TYPE_CHECKING:
    from ._calls import Calls

log = logging.getLogger("coordinator.client")

RENEWALS_PER_TTL = 3
"""Renew every TTL/3: two renewals may fail (or be slow) before the lease is in danger."""

_EARLY_FRACTION = 0.1
"""A renewal may go out this fraction of its interval early, with one that is due."""
_EARLY_MAX_S = 1.0
_IDS_PER_MESSAGE = 1024
"""Renewals written in one message at most (`LeaseKeepAliveRequest.ids`): a message costs
both ends far more than a lease id, so the renewals due together travel together."""
_BACKOFF_MIN_S = 0.02
_BACKOFF_MAX_S = 0.25

_REFUSALS = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)
"""Stream ends that refuse the renewals themselves (no retry changes them). Every other end
(UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, CANCELLED, RESOURCE_EXHAUSTED, ...) is retried until
the TTL decides."""

LossCallback = Callable[[str, str], object]
"""Called with (status code, reason) once a kept lease is lost."""


class KeptLease:
    """A lease this client keeps alive (`Client.keep_alive`): until `stop()` or its loss."""

    def __init__(self, renewer: Renewer, lease: int, ttl_ms: int, sent_at: float) -> None:
        self._renewer = renewer
        self.lease = lease
        self.ttl_s = ttl_ms / 1000
        self.expires_at = sent_at + self.ttl_s
        """Event-loop time until which the lease is known to live: the send time of the last
        acknowledged renewal (or of the grant) plus the TTL."""
        self.lost = asyncio.Event()
        """Set once the lease is lost (never cleared)."""
        self.code = ""
        """Why it was lost: NOT_FOUND (it ended), UNAVAILABLE (no renewal in time), or the
        status that refused its renewals; "" while kept."""
        self.reason = ""
        self.renewals = 0
        """Renewals acknowledged so far."""
        self._next_at = sent_at + self.ttl_s / RENEWALS_PER_TTL
        self._sent_at: float | None = None
        """Send time of the oldest unanswered renewal on the current stream (None: none)."""
        self._callbacks: list[LossCallback] = []

    def add_callback(self, fn: LossCallback) -> None:
        """Call `fn(code, reason)` on the event loop once the lease is lost (soon, if it is)."""
        if self.lost.is_set():
            asyncio.get_running_loop().call_soon(_call_back, fn, self.code, self.reason)
        else:
            self._callbacks.append(fn)

    def stop(self) -> None:
        """Stop renewing (the lease is being let go; ending it is the caller's business)."""
        self._renewer.forget(self)

    def _lose(self, code: str, reason: str) -> None:
        if self.lost.is_set():
            return
        self.code, self.reason = code, reason
        self.lost.set()
        self._renewer.forget(self)
        loop = asyncio.get_running_loop()
        for fn in self._callbacks:
            loop.call_soon(_call_back, fn, code, reason)
        self._callbacks.clear()

    def __repr__(self) -> str:
        state = f"lost ({self.code})" if self.lost.is_set() else "kept"
        return f"KeptLease({self.lease}, ttl={self.ttl_s:g} s, {state})"


def _call_back(fn: LossCallback, code: str, reason: str) -> None:
    try:
        fn(code, reason)
    except Exception:
        log.exception("a lost-lease callback failed")


class Renewer:
    """The client's one keep-alive stream and the renewal schedule of its kept leases.

    Bookkeeping is by heaps and a queue, so a wake-up costs what it settles, not the number of
    leases kept: `_schedule` (next renewal due), `_ends` (expires_at) and `_flight` (renewals
    in flight, oldest first). An entry whose time no longer matches its lease's is stale and
    skipped, except in `_ends`: an acknowledged renewal does not push one there (it only moves
    `expires_at` later); an entry that comes up before its lease's `expires_at` is pushed
    again at it, so a kept lease costs `_ends` one entry a TTL, not one per renewal."""

    def __init__(self, client: Calls) -> None:
        self._client = client
        self._kept: dict[int, KeptLease] = {}
        self._schedule: list[tuple[float, int]] = []
        self._ends: list[tuple[float, int]] = []
        self._flight: collections.deque[tuple[float, int]] = collections.deque()
        self._answered_at = 0.0
        """Loop time of the latest answer on the current stream."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.streams_opened = 0
        """KeepAlive streams opened so far (one at a time)."""
        self.answers = 0
        """Responses read on any stream so far."""
        self._ttls: collections.Counter[float] = collections.Counter()
        """How many kept leases have each TTL (s): the shortest sets the silence bound."""
        self._gave_up_until: dict[str, float] = {}
        """Endpoints whose stream this keeper abandoned as silent, until when (loop time):
        redirects naming them are not followed meanwhile."""

    def keep(self, lease: int, ttl_ms: int, sent_at: float) -> KeptLease:
        """Keep `lease` alive; `sent_at` is the loop time its grant (or last renewal the caller
        knows of) was sent. A lease already kept is returned as it is."""
        kept = self._kept.get(lease)
        if kept is None:
            kept = self._kept[lease] = KeptLease(self, lease, ttl_ms, sent_at)
            self._ttls[kept.ttl_s] += 1
            heapq.heappush(self._schedule, (kept._next_at, kept.lease))
            heapq.heappush(self._ends, (kept.expires_at, kept.lease))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="concord-keepalive")
        self._wake.set()
        return kept

    def forget(self, kept: KeptLease) -> None:
        if self._kept.get(kept.lease) is kept:
            del self._kept[kept.lease]
            self._ttls[kept.ttl_s] -= 1
            if not self._ttls[kept.ttl_s]:
                del self._ttls[kept.ttl_s]
            self._wake.set()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- bookkeeping -------------------------------------------------------------------------

    def _due(self, now: float) -> list[KeptLease]:
        """Leases whose renewal is due, and not in flight. Once one is due, every lease whose
        renewal falls due within `_EARLY_FRACTION` of its interval goes out with it, a little
        early: renewals then travel in bursts that the member confirms with one barrier each,
        a few per interval whatever the number of leases."""
        out: list[KeptLease] = []
        later: list[tuple[float, int]] = []
        while self._schedule and not self._current(self._schedule[0]):
            heapq.heappop(self._schedule)  # stale
        if not self._schedule or self._schedule[0][0] > now:
            return out  # none due yet: an early one waits for company
        while self._schedule and self._schedule[0][0] <= now + _EARLY_MAX_S:
            at, lease = heapq.heappop(self._schedule)
            if not self._current((at, lease)):
                continue
            kept = self._kept[lease]
            if at > now + _EARLY_FRACTION * kept.ttl_s / RENEWALS_PER_TTL:
                later.append((at, lease))
            else:
                out.append(kept)
        for entry in later:
            heapq.heappush(self._schedule, entry)
        return out

    def _current(self, entry: tuple[float, int]) -> bool:
        """Whether a schedule entry is still the lease's next renewal, not yet sent."""
        kept = self._kept.get(entry[1])
        return kept is not None and kept._sent_at is None and kept._next_at == entry[0]

    def _oldest_in_flight(self) -> float | None:
        while self._flight:
            sent, lease = self._flight[0]
            kept = self._kept.get(lease)
            if kept is not None and kept._sent_at == sent:
                return sent
            self._flight.popleft()
        return None

    def _quiet_since(self) -> float | None:
        """Since when the stream has been silent with renewals in flight (None: nothing in
        flight): the later of the oldest unanswered send and the last answer. A member that
        answers slowly under load is still answering; one that answers nothing is not."""
        oldest = self._oldest_in_flight()
        return None if oldest is None else max(oldest, self._answered_at)

    def _silence_limit_s(self) -> float:
        """How long a stream may answer nothing, renewals in flight, before it is abandoned:
        one renewal interval of the shortest TTL kept, at least `attempt_timeout_s` (see the
        module doc)."""
        shortest = min(self._ttls, default=0.0)
        return max(self._client.attempt_timeout_s, shortest / RENEWALS_PER_TTL)

    def _resend_unanswered(self, now: float) -> None:
        """The stream ended: what was in flight on it goes out again on the next one."""
        flight, self._flight = self._flight, collections.deque()
        for sent, lease in flight:
            kept = self._kept.get(lease)
            if kept is not None and kept._sent_at == sent:
                kept._sent_at = None
                kept._next_at = now
                heapq.heappush(self._schedule, (now, lease))

    def _expire(self, now: float) -> None:
        while self._ends and self._ends[0][0] <= now:
            at, lease = heapq.heappop(self._ends)
            kept = self._kept.get(lease)
            if kept is None or kept.expires_at < at:
                continue  # no longer kept, or an entry of an earlier keeping of this id
            if kept.expires_at > at:  # renewed since: its end is due later
                heapq.heappush(self._ends, (kept.expires_at, lease))
                continue
            kept._lose(
                "UNAVAILABLE",
                f"no renewal of lease {kept.lease} was acknowledged within its TTL of "
                f"{kept.ttl_s:g} s (the cluster may have lost its quorum, or no member is "
                "reachable)",
            )

    def _next_wake(self, default: float) -> float:
        times = [default]
        if self._schedule:
            times.append(self._schedule[0][0])
        if self._ends:
            times.append(self._ends[0][0])
        quiet = self._quiet_since()
        if quiet is not None:
            times.append(quiet + self._silence_limit_s())
        return min(times)

    # --- the stream ----------------------------------------------------------------------------

    async def _run(self) -> None:
        client = self._client
        loop = asyncio.get_running_loop()
        delay_s = _BACKOFF_MIN_S
        while self._kept:
            endpoint = client.endpoints[client._current % len(client.endpoints)]
            answers = self.answers
            failure = await self._session(endpoint)
            self._resend_unanswered(loop.time())
            if failure is None:
                delay_s = _BACKOFF_MIN_S
                continue
            delay_s = backoff_after(delay_s, answered=self.answers > answers)
            hint = client._hint(failure.leader)
            if hint and hint != endpoint and not self._gave_up_on(hint, loop.time()):
                if hint not in client.endpoints:
                    client.endpoints.append(hint)
                client._current = client.endpoints.index(hint)
                continue
            self._move_past(endpoint, loop.time())
            self._expire(loop.time())
            soonest = self._ends[0][0] if self._ends else loop.time()
            await self._sleep(min(loop.time() + delay_s, soonest))
            delay_s = min(delay_s * 2, _BACKOFF_MAX_S)

    async def _session(self, endpoint: str) -> Failure | None:
        """Renew on one stream to `endpoint` until it fails (the failure) or nothing is kept
        (None)."""
        client = self._client
        loop = asyncio.get_running_loop()
        try:
            call = client._stubs_for(endpoint).lease.KeepAlive()
        except Exception as exc:  # the client was closed
            return self._failure(exc, endpoint)
        self.streams_opened += 1
        self._answered_at = loop.time()
        reader = asyncio.ensure_future(self._read(call, endpoint))
        try:
            while True:
                now = loop.time()
                self._expire(now)
                if not self._kept:
                    return None
                due = self._due(now)
                for kept in due:
                    kept._sent_at = now
                    self._flight.append((now, kept.lease))
                try:
                    for start in range(0, len(due), _IDS_PER_MESSAGE):
                        ids = [kept.lease for kept in due[start : start + _IDS_PER_MESSAGE]]
                        await call.write(pb.LeaseKeepAliveRequest(ids=ids))
                except Exception as exc:
                    return self._failure(await _ended(exc, reader), endpoint)
                if reader.done():
                    return self._failure(_outcome(reader), endpoint)
                quiet = self._quiet_since()
                silence_s = self._silence_limit_s()
                if quiet is not None and now - quiet >= silence_s:
                    client._suspect_until[endpoint] = now + 2 * client.attempt_timeout_s
                    self._gave_up_until[endpoint] = now + 2 * client.attempt_timeout_s
                    stuck = CallFailed(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"{endpoint} answered nothing for {silence_s:g} s with renewals in flight",
                    )
                    return self._failure(stuck, endpoint)
                await self._sleep(self._next_wake(now + 1.0), reader)
        finally:
            reader.cancel()
            call.cancel()
            await asyncio.wait({reader})  # its own outcome is not raised here
            if not reader.cancelled():
                reader.exception()  # retrieved: the failure returned says what it meant

    async def _read(self, call: Any, endpoint: str) -> None:  # noqa: ANN401 (a grpc.aio call)
        """Settle renewals from the member's answers until the stream ends (raises)."""
        client = self._client
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                raise CallFailed(grpc.StatusCode.UNAVAILABLE, f"{endpoint} ended the stream")
            client._heard_from(endpoint)
            self._answered_at = asyncio.get_running_loop().time()
            self.answers += 1
            if resp.renewed:
                for one in resp.renewed:
                    self._settle(int(one.id), int(one.ttl_ms))
            else:
                self._settle(int(resp.id), int(resp.ttl_ms))

    def _settle(self, lease: int, ttl_ms: int) -> None:
        """The member answered a renewal of `lease`: its new TTL, or 0 (it has ended)."""
        kept = self._kept.get(lease)
        if kept is None or kept._sent_at is None:
            return  # no longer kept, or an answer to a renewal already matched
        sent, kept._sent_at = kept._sent_at, None
        if ttl_ms == 0:
            kept._lose("NOT_FOUND", f"lease {kept.lease} has ended (expired or revoked)")
            return
        kept.renewals += 1
        kept.expires_at = max(kept.expires_at, sent + ttl_ms / 1000)
        kept._next_at = sent + kept.ttl_s / RENEWALS_PER_TTL
        heapq.heappush(self._schedule, (kept._next_at, kept.lease))
        self._wake.set()

    def _gave_up_on(self, endpoint: str, now: float) -> bool:
        until = self._gave_up_until.get(endpoint)
        return until is not None and now < until

    def _move_past(self, endpoint: str, now: float) -> None:
        """On to the endpoint after `endpoint` (unless a call moved on already), passing over
        those whose stream this keeper gave up on while another is left (`Client._move_past`
        passes over every suspect one: see the module doc)."""
        client = self._client
        n = len(client.endpoints)
        if client.endpoints[client._current % n] != endpoint:
            return
        for step in range(1, n + 1):
            if not self._gave_up_on(client.endpoints[(client._current + step) % n], now):
                client._current += step
                return
        client._current += 1

    def _failure(self, exc: BaseException, endpoint: str) -> Failure:
        """What the end of a stream means. A refusal no retry can change loses the leases
        that were in flight on it (which one was refused cannot be told apart)."""
        client = self._client
        if isinstance(exc, Exception):
            err = client._failure(exc, endpoint)
        else:
            err = Failure.of(RuntimeError(repr(exc)), endpoint, tls=client.credentials is not None)
        if err.code in _REFUSALS and not err.wrong:
            refused = [self._kept[lease] for _, lease in self._flight if lease in self._kept]
            for kept in refused:
                if kept._sent_at is not None:
                    kept._lose(err.code.name, f"the member refused its renewal: {err.details}")
        elif err.code != grpc.StatusCode.UNAVAILABLE or not err.leader:
            log.info(
                "keep-alive stream to %s ended (%s: %s); reopening",
                endpoint,
                err.code.name,
                err.details,
            )
        return err

    async def _sleep(self, until: float, reader: asyncio.Future[None] | None = None) -> None:
        """Until loop time `until`, a `keep`/`forget`/answer wake-up, or `reader` ending."""
        loop = asyncio.get_running_loop()
        self._wake.clear()
        waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
        if reader is not None:
            waits.add(reader)  # type: ignore[arg-type]
        try:
            await asyncio.wait(
                waits, timeout=max(0.0, until - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waits:
                if w is not reader:
                    w.cancel()


def _outcome(reader: asyncio.Future[None]) -> BaseException:
    if reader.cancelled():
        return asyncio.CancelledError()
    exc = reader.exception()
    return exc if exc is not None else CallFailed(grpc.StatusCode.UNAVAILABLE, "stream ended")


async def _ended(exc: BaseException, reader: asyncio.Future[None]) -> BaseException:
    """The status a stream ended with, when a write failed (grpc raises InvalidStateError on a
    finished call: its reader has the status)."""
    if isinstance(exc, grpc.RpcError):
        return exc  # type: ignore[no-any-return]
    await asyncio.wait({reader}, timeout=1.0)
    if reader.done():
        return _outcome(reader)
    return exc


def backoff_after(delay_s: float, *, answered: bool) -> float:
    """The back-off before the next stream after one that failed: from the start again if
    that stream was answered (a stream that worked for an hour and then broke is a new
    trouble, not the tenth retry of an old one), else as it stood."""
    return _BACKOFF_MIN_S if answered else delay_s
