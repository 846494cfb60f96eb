"""What every service shares: proposing, linearizable reads, leader redirects, quorum loss.

Mutations. `propose` hands the command to `RaftLoop.propose` with the request's session
(client id, seq) and waits for it to apply. Outcomes become statuses a client can act on:

- not the leader, and the leader is known and was heard from recently: UNAVAILABLE with the
  leader in the trailing metadata (`concord-leader`) and in the message; nothing was executed;
- no leader known (an election is running, or this member is cut off): wait for one, up to
  the request's deadline; once no leader has been known for `no_quorum_after_s`, fail fast with
  UNAVAILABLE "no quorum: K of N members reachable";
- the entry was overwritten by a new leader (`ProposalLostError`), or the quorum was lost while
  it waited: UNAVAILABLE; the outcome is unknown, so the client retries *with the same session*
  and the state machine answers a duplicate from its session table.

Reads. Linearizable unless the request says `serializable`: `read` waits for a ReadIndex
barrier (`RaftLoop.read_barrier`), which a follower obtains from the leader, then the handler
reads the local state machine. A barrier that cannot complete (leader changed, quorum lost)
is retried or failed like a proposal. Serializable reads skip all of that and work without a
quorum.

All of this runs on the event loop that runs the `RaftLoop`, so reading the state machine
between two awaits sees one consistent state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import TypeVar

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import Applied, Command, FsmError
from coordinator.raft import (
    ConfChange,
    ConfChangeError,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
)
from coordinator.runtime.loop import ProposalLostError, RaftLoop, StoppedError
from coordinator.runtime.view import RaftView

from ._errors import LEADER_METADATA_KEY, Code, ServiceError, from_fsm, unavailable
from ._hub import Hub, done_unless, first_done, stopping_error
from ._watchers import WatchEvents, WatchHub

log = logging.getLogger("concord.server")
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    deadline_s: float = 5.0
    """Default bound on a request, or on one step of a stream or of a blocking wait's
    proposal; a shorter client deadline wins."""
    no_quorum_after_s: float | None = None
    """After this long without a known leader, writes and linearizable reads fail fast with
    UNAVAILABLE "no quorum". None: two election timeouts (the longest a follower waits
    before it campaigns, so a healthy election never trips it)."""
    watch_batch_max: int = 1000
    """At most this many events per WatchResponse."""
    watch_queue_events_max: int = 4096
    """A watch stream further behind than this many events is ended as a slow consumer
    (RESOURCE_EXHAUSTED, naming the revision to resume from): see `_watchers.py`."""
    sealing_key_renew_s: float | None = 30 * 86_400.0
    """The leader makes a new sealing key once the newest is this old (None: only on
    demand); see `_secrets.py`."""


@dataclass(slots=True)
class LeaseStats:
    """What this member's KeepAlive service did (counters, for tests and benchmarks)."""

    streams: int = 0
    """KeepAlive streams opened."""
    renewals: int = 0
    """Renewal requests received, on every stream."""
    messages: int = 0
    """KeepAlive messages read (a message may carry many renewals)."""
    barriers: int = 0
    """Read barriers taken to confirm them (one per batch)."""


@dataclass(frozen=True, slots=True)
class Session:
    client_id: int = 0
    seq: int = 0


NO_SESSION = Session()


class Core:
    def __init__(
        self, loop: RaftLoop, cfg: ServiceConfig, watch_events: WatchEvents | None = None
    ) -> None:
        self.loop = loop
        """For writes, barriers and observers only (`submit`, `change_membership`,
        `read_barrier_future`, `transfer_leader`, `rotate_data_key`, `add_observer`)."""
        self.view = RaftView(loop)
        """Everything the services read of the Raft loop."""
        self.fsm = self.view.fsm
        self.cfg = cfg
        threshold = cfg.no_quorum_after_s
        if threshold is None:
            threshold = 2 * self.view.election_timeout_s
        self.hub = Hub(self.view, threshold)
        self.watchers = WatchHub(self.view, cfg.watch_queue_events_max, watch_events)
        self._tasks: set[asyncio.Task[None]] = set()
        self.lease_stats = LeaseStats()
        loop.add_observer(self.hub)
        loop.add_observer(self.watchers)

    def close(self) -> None:
        """Detach from the loop and cancel background work (the server is stopping)."""
        self.loop.remove_observer(self.hub)
        self.loop.remove_observer(self.watchers)
        self.watchers.close()
        for task in list(self._tasks):
            task.cancel()

    def spawn(self, coro: Coroutine[object, object, None]) -> None:
        """Run `coro` in the background (clean-ups that must outlive a cancelled RPC)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background clean-up failed: %s", task.exception())

    @property
    def id(self) -> int:
        return self.view.member_id

    def header(self, revision: int | None = None, index: int = 0) -> pb.ResponseHeader:
        return pb.ResponseHeader(
            member_id=self.id,
            revision=self.fsm.revision if revision is None else revision,
            raft_term=self.view.term,
            raft_index=index,
        )

    # --- writes ------------------------------------------------------------------------------

    async def propose(self, command: Command, session: Session = NO_SESSION) -> Applied:
        """Replicate `command` and return what applying it produced (see the module doc)."""
        while True:
            self._check_quorum(write=True)
            try:
                return await self._guard(
                    self.loop.submit(command, session.client_id, session.seq), write=True
                )
            except NotLeaderError as err:
                await self._not_leader(err)
            except ProposalLostError:
                raise unavailable(
                    "a new leader took over before this request was applied here (its entry was "
                    "overwritten, or superseded by a snapshot), so its outcome is unknown: retry "
                    "it with the same session (a duplicate is answered, not executed twice)"
                ) from None
            except ProposalDroppedError as err:
                raise unavailable(f"{err} (the request was not executed)") from None
            except StoppedError:
                raise stopping_error() from None

    async def change_membership(self, cc: ConfChange) -> Applied:
        """Propose a Raft membership change and wait until it applies."""
        while True:
            self._check_quorum(write=True)
            try:
                return await self._guard(self.loop.change_membership(cc), write=True)
            except NotLeaderError as err:
                await self._not_leader(err)
            except ConfChangeError as err:
                raise ServiceError(Code.FAILED_PRECONDITION, str(err)) from None
            except ProposalLostError:
                raise unavailable(
                    "a new leader took over before the membership change committed; list the "
                    "members to see whether it took effect, and retry if it did not"
                ) from None
            except ProposalDroppedError as err:
                raise unavailable(f"{err} (the change was not made)") from None
            except StoppedError:
                raise stopping_error() from None

    def expect(self, applied: Applied, kind: type[_R]) -> _R:
        """The command's result as `kind`; an FsmError becomes its status."""
        result = applied.result
        if isinstance(result, FsmError):
            raise from_fsm(result)
        if not isinstance(result, kind) and applied.duplicate:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"session seq {applied.seq} of client {applied.client_id} was already used for "
                f"a different request (its saved answer is a {type(result).__name__}); a retry "
                "must repeat the same request, and a new request takes the next seq",
            )
        if not isinstance(result, kind):
            raise ServiceError(
                Code.INTERNAL,
                f"entry {applied.index} applied with result {result!r}, expected a "
                f"{kind.__name__}; this is a bug in the member: please report it",
            )
        return result

    # --- reads -------------------------------------------------------------------------------

    async def read(self, serializable: bool) -> None:
        """Return once a read of the local state machine is linearizable (at once if
        `serializable`)."""
        if serializable:
            return
        while True:
            self._check_quorum(write=False)
            leader = self.view.leader
            if leader == 0 or (leader != self.id and not self._recently_heard(leader)):
                await self._await_leader(write=False)
                continue
            if await self._barrier("retry the read"):
                return

    async def confirm_leading(self) -> None:
        """Return once a barrier requested now has confirmed that this member still leads. A
        member that knows another live leader redirects there at once, also when it learns of
        it while waiting (a deposed leader): unlike `require_leader` it takes no barrier
        through that leader first, which would only confirm that it does not lead, and which
        a new leader does not grant before its first entry commits. Fails like `read`."""
        while True:
            self._check_quorum(write=False)
            leader = self.view.leader
            if leader != self.id:
                await self._not_leader(NotLeaderError(leader), write=False)
                continue
            if await self._barrier("retry") and self.view.is_leader:
                return

    async def _barrier(self, retry: str) -> bool:
        """One read barrier requested now: True once a quorum confirmed it; False if the
        leader changed, the quorum was lost or this member was deposed meanwhile (look
        again). Other failures end the call, advising to `retry`."""
        change = self.hub.leader_change()
        lost = self.hub.quorum_lost()
        barrier = self.loop.read_barrier_future()
        try:
            done = await done_unless(barrier, change, lost)
        except asyncio.CancelledError:
            barrier.cancel()
            raise
        if not done:
            return False
        try:
            barrier.result()
        except NotLeaderError:
            return False
        except StoppedError:
            raise stopping_error() from None
        except RaftError as err:
            raise unavailable(f"{err}; {retry}") from None
        return True

    async def require_leader(self) -> None:
        """Confirm this member leads (a barrier), else redirect to the leader."""
        await self.read(False)
        if not self.view.is_leader:
            await self._not_leader(NotLeaderError(self.view.leader), write=False)
            raise unavailable("leadership moved while answering; retry")

    # --- errors ------------------------------------------------------------------------------

    def client_url(self, member: int) -> str:
        """The member's client URL from the replicated member directory ("" if unknown)."""
        return next((m.client_url for m in self.fsm.members() if m.id == member), "")

    def redirect(self, leader: int) -> ServiceError:
        url = self.client_url(leader)
        where = (
            f"member {leader} at {url}"
            if url
            else f"member {leader} (its client URL is not in the member directory)"
        )
        return unavailable(
            f"member {self.id} is not the leader: send this request to the leader, {where}; "
            f"the trailing metadata {LEADER_METADATA_KEY!r} names it. Nothing was executed "
            "here, so retrying there (with the same session) is safe",
            ((LEADER_METADATA_KEY, url or str(leader)),),
        )

    def reachable(self) -> tuple[list[int], list[int]]:
        """Voters this member heard from within `no_quorum_after_s` (itself included), and the
        others."""
        window = self.hub.no_quorum_after_s
        voters = sorted(self.view.conf.voters)
        up = [v for v in voters if (h := self.view.last_heard_s(v)) is not None and h <= window]
        return up, [v for v in voters if v not in up]

    def no_quorum(self, *, write: bool, in_flight: bool = True) -> ServiceError:
        """UNAVAILABLE "no quorum: K of N members reachable ..."; for a write, whether its
        outcome is unknown (`in_flight`: it may have been appended) or nothing ran."""
        if self.hub.stopped:
            return stopping_error()
        up, down = self.reachable()
        n = len(up) + len(down)
        need = n // 2 + 1
        message = (
            f"no quorum: {len(up)} of {n} members reachable from member {self.id} "
            f"(reachable: {_ids(up)}; unreachable: {_ids(down)}); a quorum needs {need}, and no "
            f"leader has been known for over {self.hub.no_quorum_after_s:.1f} s. Writes and "
            "linearizable reads fail until a quorum is back; serializable reads still work. "
            "Restart or reconnect the unreachable members"
        )
        if write and in_flight:
            message += (
                ". This request's outcome is unknown: retry it with the same session once a "
                "quorum is back"
            )
        elif write:
            message += ". Nothing was executed: retry once a quorum is back"
        return unavailable(message)

    def _check_quorum(self, *, write: bool) -> None:
        if self.hub.lost:
            raise self.no_quorum(write=write, in_flight=False)

    def _recently_heard(self, member: int) -> bool:
        """Heard from within an election timeout: a live leader heartbeats far more often."""
        heard = self.view.last_heard_s(member)
        return heard is not None and heard <= self.view.election_timeout_s

    async def _not_leader(self, err: NotLeaderError, *, write: bool = True) -> None:
        """Redirect to a live leader (raises), or wait for one to be known (returns)."""
        if err.leader and err.leader != self.id and self._recently_heard(err.leader):
            raise self.redirect(err.leader) from None
        await self._await_leader(write=write)

    async def _await_leader(self, *, write: bool) -> None:
        """No live leader is known: wait for a leader change, or fail once the quorum is
        declared lost."""
        self._check_quorum(write=write)
        change = self.hub.leader_change()
        lost = self.hub.quorum_lost()
        await first_done(change, lost)
        self._check_quorum(write=write)

    async def _guard(self, aw: Awaitable[_T], *, write: bool) -> _T:
        """Await `aw`, but give up with "no quorum" if the quorum is declared lost first."""
        fut = asyncio.ensure_future(aw)
        try:
            done = await done_unless(fut, self.hub.quorum_lost())
        except asyncio.CancelledError:
            fut.cancel()
            raise
        if done:
            return fut.result()
        raise self.no_quorum(write=write)


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids)) if ids else "none"
