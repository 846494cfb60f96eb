"""Held locks and leaderships: a lease kept alive in the background, and loss said at once.

What a holder needs. A lock (or a leadership) lives exactly as long as the lease it was
granted under. A program inside `async with client.lock(...)` must learn the moment it can
no longer count on it, or it goes on acting as the holder while someone else already is.
So `Client.lock()` and `Client.leadership()` yield a handle (`HeldLock`, `HeldLeadership`)
whose `lost` event is set, whose `wait_lost()` returns, and whose callbacks run, as soon as
the lease is gone or can no longer be known to be alive; `check()` raises `LockLost` then.

The keeper. The handle's lease is kept alive on the client's one keep-alive stream, shared by
every lease the client keeps (`_keepalive.py`: renewals every TTL/3 counted from the send of
the last acknowledged one, pipelined, retried on any transient failure). The hold is lost when
- the service answers that the lease has ended (NOT_FOUND: expired, or revoked by someone), or
- no renewal was acknowledged before the TTL would have run out, counted from the moment the
  last acknowledged renewal was SENT (its answer may come late, but the service started the
  new TTL no earlier than that): `expires_at` below. The service only ever expires a lease
  later than this (it counts from when the renewal arrived, and gives every lease a full TTL
  again after a leader change), so the holder hears of the loss no later than anyone else
  can be granted the lock.
A loss is logged (warning), and the holder is told at once. Nothing is silent.

The watch. A lease revoked by someone else, or a lock released behind the holder's back, would
otherwise be heard only at the next renewal (up to TTL/3 later). So the handle also follows
the lock's (election's) events from its grant on, and the event that ends its hold (UNLOCK of
its lease and token; ELECTION vacant, or led by another lease) is a loss at once. The watch
is an accelerator only: if it breaks for good, that is logged and the renewals still decide.

Leaving the block. The lease is the handle's own, so revoking it releases the lock (or
resigns the leadership) in one call, with no lock-delay. That runs however the body ends,
also after a loss or a failed keeper, within a bounded budget; its failure is logged and never
replaces the body's exception or result (if the revoke cannot reach a quorum, the lease is no
longer renewed and ends within its TTL anyway). A body that ends normally after a loss is
not turned into an error either: the loss was logged and signalled; `check()` is the way to
make it one.

Deadlines. `acquire`, `campaign`, `lock()` and `leadership()` take `timeout_s` (seconds, None =
wait forever) that bounds everything they do, the client's internal retries included (they
run inside an `asyncio.timeout`, so a cluster with no quorum or no member reachable cannot
stretch it). On timeout they raise `DeadlineExceeded`; on timeout or cancellation they take
the caller out of the wait queue (the state machine's Unlock / Resign leave a queue as well
as release a hold, see `coordinator/fsm/locks.py`), which also releases a grant that raced
with the timeout. The context managers do it by revoking their own lease, which also covers an
acquire still in flight: once the lease is gone, that acquire can only fail. The withdrawal is
itself bounded (`Client.rpc_timeout_s`); if it cannot get through (no quorum), that is
logged, and the queued lease stays in line until it ends: within its TTL for the context
managers' own lease (no longer renewed); for a lease the caller passed to `acquire`, when the
caller lets it end. `acquire` withdraws under the next sequence number of the acquire's own
session, so an acquire that reaches the state machine only after its withdrawal is a stale
request there and is dropped (it cannot queue or grant behind the withdrawal's back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from coordinator.api.v1 import concord_pb2 as pb

from ._errors import ConcordError, DeadlineExceeded
from ._types import Event, EventType, Leadership, Lock

if TYPE_CHECKING:
    from ._client import Client

T = TypeVar("T")

log = logging.getLogger("coordinator.client")


class LockBusy(ConcordError):
    """A non-blocking `Client.lock(..., wait=False)` found the lock held by others (all of
    its `max_holders` places taken); nothing was queued and the lease was revoked."""

    def __init__(self, name: str) -> None:
        super().__init__("FAILED_PRECONDITION", f"lock {name!r} is held by someone else")
        self.name = name


class LockLost(ConcordError):
    """A held lock or leadership is gone, or can no longer be known to be held.

    `code` is NOT_FOUND when the service said the lease ended, UNAVAILABLE when no renewal
    got through before the TTL ran out (the lease may still be alive, but the holder cannot
    know it, so it must act as if it were not)."""

    def __init__(self, what: str, code: str, reason: str) -> None:
        super().__init__(code, f"{what} is lost: {reason}")
        self.what = what
        self.reason = reason


def _timed_out(what: str, timeout_s: float, detail: str = "") -> DeadlineExceeded:
    """A blocking call (acquire, campaign, lock, leadership) ran out of the caller's
    `timeout_s`; the caller's place in the queue was withdrawn."""
    message = f"{what} not obtained within the timeout of {timeout_s:g} s"
    return DeadlineExceeded(f"{message} ({detail})" if detail else message)


LostCallback = Callable[[LockLost], object]


class _Keeper:
    """Keeps one lease alive (on the client's keep-alive stream) and watches for its end;
    records when it is lost (see the module doc)."""

    def __init__(self, client: Client, lease: int, ttl_ms: int, sent_at: float) -> None:
        self.client = client
        self.lease = lease
        self.ttl_s = ttl_ms / 1000
        self.what = f"lease {lease}"
        """What the lease holds, for messages (set once the lock or leadership is known)."""
        self.lost = asyncio.Event()
        self.error: LockLost | None = None
        self._callbacks: list[LostCallback] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._kept = client.keep_alive(lease, ttl_ms, sent_at=sent_at)
        self._kept.add_callback(self._lose)

    @property
    def expires_at(self) -> float:
        """Loop time until which the lease is known to live: the send time of the last
        acknowledged renewal (or of the grant) plus the TTL."""
        return self._kept.expires_at

    def watch_for_end(
        self, key: bytes, start_revision: int, ended: Callable[[Event], bool]
    ) -> None:
        """Also follow the lock's (or election's) events from `start_revision`: the first
        one `ended` accepts is a loss, heard at once rather than at the next renewal."""
        self._tasks.append(
            asyncio.create_task(
                self._watch(key, start_revision, ended), name=f"concord-watch-{self.lease}"
            )
        )

    async def _watch(self, key: bytes, start_revision: int, ended: Callable[[Event], bool]) -> None:
        try:
            async for event in self.client.watch(key, start_revision=start_revision):
                if ended(event):
                    self._lose(
                        "NOT_FOUND",
                        f"the cluster ended it at revision {event.revision} (lease "
                        f"{self.lease} ended, or it was released)",
                    )
                    return
        except Exception as err:  # the renewals still tell a loss: only say so
            log.info("watching %s stopped (%s); renewals alone now tell its loss", self.what, err)

    def _lose(self, code: str, reason: str) -> None:
        if self.error is not None:
            return
        self.error = LockLost(self.what, code, reason)
        log.warning("%s", self.error)
        self.lost.set()
        self._kept.stop()
        current = asyncio.current_task()
        for task in self._tasks:  # nothing left to renew or watch
            if task is not current:
                task.cancel()
        loop = asyncio.get_running_loop()
        for fn in self._callbacks:
            loop.call_soon(_call_back, fn, self.error)
        self._callbacks.clear()

    def add_callback(self, fn: LostCallback) -> None:
        if self.error is not None:
            asyncio.get_running_loop().call_soon(_call_back, fn, self.error)
        else:
            self._callbacks.append(fn)

    async def stop(self) -> None:
        """Stop renewing and watching (the hold is being let go: its own release must not
        read as a loss)."""
        self._kept.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _call_back(fn: LostCallback, err: LockLost) -> None:
    try:
        fn(err)
    except Exception:
        log.exception("a lost-lock callback failed")


class Held:
    """What a held lock and a held leadership share: the lease, and the loss signals."""

    def __init__(self, keeper: _Keeper, name: str, fencing_token: int) -> None:
        self._keeper = keeper
        self.name = name
        self.fencing_token = fencing_token
        """The grant's fencing token: pass it to whatever the holder writes to."""

    @property
    def lease(self) -> int:
        return self._keeper.lease

    @property
    def lost(self) -> asyncio.Event:
        """Set the moment the hold is lost (never cleared)."""
        return self._keeper.lost

    @property
    def error(self) -> LockLost | None:
        """Why the hold was lost, or None while it is held."""
        return self._keeper.error

    @property
    def expires_at(self) -> float:
        """Event-loop time (`loop.time()`) until which the hold is known to last, unless
        renewed again: the last successful renewal's send time plus the TTL."""
        return self._keeper.expires_at

    async def wait_lost(self) -> LockLost:
        """Wait until the hold is lost; returns why (for `asyncio.wait` or a TaskGroup). A
        hold let go of without being lost is never lost: do not wait past the block."""
        await self._keeper.lost.wait()
        assert self._keeper.error is not None
        return self._keeper.error

    def add_lost_callback(self, fn: LostCallback) -> None:
        """Call `fn(error)` on the event loop once the hold is lost (soon, if it already
        is). An exception from `fn` is logged, not raised."""
        self._keeper.add_callback(fn)

    def check(self) -> None:
        """Raise `LockLost` if the hold is lost; call it before acting as the holder."""
        if self._keeper.error is not None:
            raise self._keeper.error


class HeldLock(Held):
    """A lock held for the body of `async with client.lock(...)`."""

    def __init__(self, keeper: _Keeper, grant: Lock) -> None:
        super().__init__(keeper, grant.name, grant.fencing_token)
        self.grant = grant
        """The plain grant (for `Client.release`, `Client.check_fence`)."""

    def __repr__(self) -> str:
        state = "lost" if self.error else "held"
        return f"HeldLock({self.name!r}, lease={self.lease}, token={self.fencing_token}, {state})"


class HeldLeadership(Held):
    """A leadership held for the body of `async with client.leadership(...)`."""

    def __init__(self, keeper: _Keeper, client: Client, leadership: Leadership) -> None:
        super().__init__(keeper, leadership.election, leadership.fencing_token)
        self._client = client
        self.leadership = leadership
        """The plain leadership (its `key()` is what Proclaim and Resign take)."""

    @property
    def value(self) -> bytes:
        return self.leadership.value

    async def proclaim(self, value: bytes) -> None:
        """Publish a new value as the leader (FAILED_PRECONDITION if no longer leading)."""
        self.check()
        self.leadership = await self._client.proclaim(self.leadership, value)

    def __repr__(self) -> str:
        state = "lost" if self.error else "held"
        return (
            f"HeldLeadership({self.name!r}, lease={self.lease}, token={self.fencing_token}, "
            f"{state})"
        )


# --- deadlines and withdrawal ------------------------------------------------------------------


async def within(
    what: str,
    timeout_s: float | None,
    attempt: Callable[[], Awaitable[T]],
    withdraw: Callable[[], Awaitable[None]],
    budget_s: float,
) -> T:
    """Run `attempt` within `timeout_s`; on timeout (-> `DeadlineExceeded`) or cancellation,
    run `withdraw` (bounded by `budget_s`) before the error goes on."""
    if timeout_s is not None and timeout_s < 0:
        raise ValueError(f"timeout must be >= 0 (or None), got {timeout_s}")
    scope = asyncio.timeout(timeout_s)
    try:
        async with scope:
            return await attempt()
    except TimeoutError:
        if not scope.expired():
            raise
        await let_go(what, withdraw, budget_s)
        raise _timed_out(what, timeout_s or 0.0) from None
    except asyncio.CancelledError:
        await let_go(what, withdraw, budget_s)
        raise


async def let_go(what: str, undo: Callable[[], Awaitable[None]], budget_s: float) -> None:
    """Run `undo` (a release, a withdrawal), bounded by `budget_s`, whatever happens to the
    caller meanwhile: it runs as a task of its own, so a second cancellation of the caller
    stops the wait, not the undo. A failure is logged, never raised: it must not replace the
    error or result the caller is about to return."""

    async def bounded() -> None:
        async with asyncio.timeout(budget_s):
            await undo()

    task = asyncio.ensure_future(bounded())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda t: _log_undo(what, t))
        raise
    except TimeoutError:
        log.warning(
            "letting go of %s did not get through within %g s; it ends with its lease",
            what,
            budget_s,
        )
    except ConcordError as err:
        if err.code != "NOT_FOUND":  # NOT_FOUND: nothing left to let go of
            log.warning("letting go of %s failed: %s; it ends with its lease", what, err)
    except Exception as err:
        log.warning("letting go of %s failed: %r; it ends with its lease", what, err)


def _log_undo(what: str, task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("letting go of %s failed: %s", what, task.exception())


async def _until_lost(keeper: _Keeper, attempt: Awaitable[T]) -> T:
    """`attempt`, unless the keeper loses the lease first (then `LockLost`): waiting on in a
    queue with a lease that is gone cannot end in a grant."""
    task = asyncio.ensure_future(attempt)
    lost = asyncio.ensure_future(keeper.lost.wait())
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    if keeper.error is not None:
        raise keeper.error
    return task.result()


@contextlib.asynccontextmanager
async def _lease(
    client: Client, what: str, ttl_ms: int, timeout_s: float | None
) -> AsyncIterator[tuple[_Keeper, float | None]]:
    """A lease of our own, kept alive, revoked (bounded) on exit; and the deadline left."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    sent_at = loop.time()
    try:
        async with asyncio.timeout_at(deadline):
            lease = await client.lease_grant(ttl_ms)
    except TimeoutError:
        # A grant that got through after all is never kept alive: it ends with its TTL.
        raise _timed_out(what, timeout_s or 0.0, "no lease could be granted") from None
    keeper = _Keeper(client, lease, ttl_ms, sent_at)
    keeper.what = what
    try:
        yield keeper, deadline
    finally:
        await keeper.stop()
        await let_go(what, lambda: client.lease_revoke(lease), client.rpc_timeout_s)


async def _obtain(
    keeper: _Keeper,
    what: str,
    timeout_s: float | None,
    deadline: float | None,
    attempt: Awaitable[T],
) -> T:
    """`attempt` (an acquire or a campaign under the keeper's lease) within the deadline.
    Its withdrawal, on any failure, is the revoke `_lease` does on the way out."""
    scope = asyncio.timeout_at(deadline)
    try:
        async with scope:
            return await _until_lost(keeper, attempt)
    except TimeoutError:
        if not scope.expired():
            raise
        raise _timed_out(what, timeout_s or 0.0) from None


@contextlib.asynccontextmanager
async def hold_lock(
    client: Client,
    name: str,
    *,
    ttl_ms: int,
    timeout_s: float | None,
    max_holders: int,
    lock_delay_ms: int,
    wait: bool = True,
) -> AsyncIterator[HeldLock]:
    what = f"lock {name!r}"
    async with _lease(client, what, ttl_ms, timeout_s) as (keeper, deadline):
        # Not `acquire`: its own withdrawal (Unlock) would be redundant with the revoke.
        with client.session() as session:
            req = pb.LockRequest(
                session=session,
                name=name,
                lease=keeper.lease,
                max_holders=max_holders,
                lock_delay_ms=lock_delay_ms,
                wait=wait,
            )
            # wait=False: the member answers at once and leaves nothing queued when the lock
            # is taken (the lease is revoked on the way out all the same).
            attempt = client._wait_for_lock(req) if wait else client._try_lock(req)
            grant = await _obtain(keeper, what, timeout_s, deadline, attempt)
            if grant is None:
                raise LockBusy(name)
        lease, token = keeper.lease, grant.fencing_token

        def released(e: Event) -> bool:
            return e.type is EventType.UNLOCK and e.kv.lease == lease and e.kv.version == token

        keeper.watch_for_end(name.encode(), token + 1, released)
        yield HeldLock(keeper, grant)


@contextlib.asynccontextmanager
async def hold_leadership(
    client: Client, election: str, value: bytes, *, ttl_ms: int, timeout_s: float | None
) -> AsyncIterator[HeldLeadership]:
    what = f"the leadership of election {election!r}"
    async with _lease(client, what, ttl_ms, timeout_s) as (keeper, deadline):
        with client.session() as session:
            req = pb.CampaignRequest(
                session=session, election=election, lease=keeper.lease, value=value
            )
            attempt = client._wait_for_leadership(req)
            leadership = await _obtain(keeper, what, timeout_s, deadline, attempt)
        lease = keeper.lease

        def vacated(e: Event) -> bool:
            # Vacant (version 0) after us, or somebody else leads.
            return e.type is EventType.ELECTION and (e.kv.lease != lease or e.kv.version == 0)

        keeper.watch_for_end(election.encode(), leadership.fencing_token + 1, vacated)
        yield HeldLeadership(keeper, client, leadership)
