"""concord.v1.Cluster: member list (docker-node-ls style), one-at-a-time membership changes,
leadership transfer, status, and join tokens (whose logic lives in `_join.py`).

MemberList joins the Raft configuration (who votes, who learns) with the replicated member
directory (names and URLs) and, on the leader, with replication progress: LEADER for itself;
REACHABLE for a peer that answered within the no-quorum window (its progress is
`recent_active`, or this member heard from it lately); UNREACHABLE otherwise; `match_index`
from the leader's progress. A non-serializable list is answered by the leader only (others
redirect, as for writes). A serializable list is answered locally: the leader is LEADER, the
others UNKNOWN with match_index 0 (a follower knows nobody's progress).

Changes go through the leader, one at a time (Raft's single-server changes):
- MemberAddLearner records the member in the directory (MemberUpsert: level-based, so a retry
  is harmless), then adds it as a learner; adding a member that is already a learner is a
  no-op success, adding a voter is FAILED_PRECONDITION. A removed id is refused unless the
  request says `readmit` (the removed member itself comes back, its old process gone: the
  operator's scaled-down-and-up StatefulSet ordinal), which first proposes MemberReadmit.
- MemberPromote makes a caught-up learner a voter (FAILED_PRECONDITION while it lags; retry
  once caught up); promoting a voter is a no-op success.
- MemberRemove removes it from the configuration, then from the directory. The leader cannot
  remove itself: transfer leadership first.
- TransferLeader waits until the target leads, or fails with UNAVAILABLE if Raft gave up (the
  target did not catch up within an election timeout).
"""

from __future__ import annotations

import asyncio

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.fsm import MemberReadmit, MemberRemove, MemberUpsert, RevisionResult
from coordinator.raft import ConfChange, ConfChangeType, NotLeaderError, RaftError, Role
from coordinator.runtime.loop import StoppedError

from . import _validate as v
from ._core import Core
from ._errors import Code, ServiceError, unavailable
from ._hub import first_done, stopping_error
from ._join_tokens import join_token_create, join_token_list, join_token_revoke
from ._rpc import Call, Servicer, unary

_M = pb.Member


class ClusterService(Servicer):
    def __init__(self, core: Core, *, ca_pem: bytes | None = None) -> None:
        super().__init__(core.cfg.deadline_s)
        self.core = core
        self.ca_pem = ca_pem
        """The cluster CA, which join tokens name (None: the member runs without TLS)."""

    # --- join tokens (see _join.py) ------------------------------------------------------------

    @unary
    async def JoinTokenCreate(
        self, request: pb.JoinTokenCreateRequest, call: Call
    ) -> pb.JoinTokenCreateResponse:
        return await join_token_create(self.core, self.ca_pem)

    @unary
    async def JoinTokenList(
        self, request: pb.JoinTokenListRequest, call: Call
    ) -> pb.JoinTokenListResponse:
        return await join_token_list(self.core)

    @unary
    async def JoinTokenRevoke(
        self, request: pb.JoinTokenRevokeRequest, call: Call
    ) -> pb.JoinTokenRevokeResponse:
        return await join_token_revoke(self.core, request)

    # --- members -------------------------------------------------------------------------------

    @unary
    async def MemberList(self, request: pb.MemberListRequest, call: Call) -> pb.MemberListResponse:
        core = self.core
        if not request.serializable:
            await core.require_leader()
        status = core.view.status()
        directory = {m.id: m for m in core.fsm.members()}
        leading = status.role is Role.LEADER
        window = core.hub.no_quorum_after_s
        members = []
        for member in sorted(status.conf.voters | status.conf.learners):
            entry = directory.get(member)
            reach, match = _M.UNKNOWN, 0
            if member == status.leader:
                reach = _M.LEADER
            if leading:
                peer = status.peers.get(member)
                match = peer.match if peer is not None else 0
                if member != status.id:
                    heard = core.view.last_heard_s(member)
                    active = (peer is not None and peer.recent_active) or (
                        heard is not None and heard <= window
                    )
                    reach = _M.REACHABLE if active else _M.UNREACHABLE
            members.append(
                pb.Member(
                    id=member,
                    name=entry.name if entry else "",
                    peer_url=entry.peer_url if entry else "",
                    client_url=entry.client_url if entry else "",
                    role=_M.LEARNER if member in status.conf.learners else _M.VOTER,
                    status=reach,
                    match_index=match,
                )
            )
        return pb.MemberListResponse(header=core.header(), members=members, leader=status.leader)

    @unary
    async def MemberAddLearner(
        self, request: pb.MemberAddLearnerRequest, call: Call
    ) -> pb.MemberAddLearnerResponse:
        core = self.core
        member = v.member_id(request.id)
        name = v.name(request.name, "member")
        await core.require_leader()
        if member in core.view.conf.voters:
            raise ServiceError(
                Code.FAILED_PRECONDITION, f"member {member} is already a voter; nothing to add"
            )
        if request.readmit and member in core.fsm.removed_member_ids():
            # The caller vouches that this is the removed member itself, its old process gone.
            core.expect(await core.propose(MemberReadmit(member)), RevisionResult)
        upsert = MemberUpsert(member, name, request.peer_url, request.client_url)
        core.expect(await core.propose(upsert), RevisionResult)
        index = 0
        if member not in core.view.conf.learners:
            applied = await core.change_membership(ConfChange(ConfChangeType.ADD_LEARNER, member))
            index = applied.index
        return pb.MemberAddLearnerResponse(header=core.header(None, index))

    @unary
    async def MemberPromote(
        self, request: pb.MemberIdRequest, call: Call
    ) -> pb.MemberChangeResponse:
        core = self.core
        member = v.member_id(request.id)
        await core.require_leader()
        index = 0
        if member not in core.view.conf.voters:
            applied = await core.change_membership(ConfChange(ConfChangeType.PROMOTE, member))
            index = applied.index
        return pb.MemberChangeResponse(header=core.header(None, index))

    @unary
    async def MemberRemove(
        self, request: pb.MemberIdRequest, call: Call
    ) -> pb.MemberChangeResponse:
        core = self.core
        member = v.member_id(request.id)
        await core.require_leader()
        conf = core.view.conf
        listed = any(m.id == member for m in core.fsm.members())
        if member == core.id:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"member {member} is the leader and cannot remove itself: transfer leadership "
                "to another voter first (`concordctl member transfer ID`), then remove it "
                "through the new leader",
            )
        if member not in conf.voters and member not in conf.learners and not listed:
            raise ServiceError(
                Code.NOT_FOUND,
                f"member {member} is neither in the Raft configuration nor in the member "
                "directory; list the members to see their ids",
            )
        # The directory first: listed or not, it then remembers the id as removed (never to
        # be reused), even if the configuration change below fails and must be retried.
        applied = await core.propose(MemberRemove(member))
        core.expect(applied, RevisionResult)
        index = applied.index
        conf = core.view.conf
        if member in conf.voters or member in conf.learners:
            applied = await core.change_membership(ConfChange(ConfChangeType.REMOVE, member))
            index = applied.index
        return pb.MemberChangeResponse(header=core.header(None, index))

    @unary
    async def TransferLeader(
        self, request: pb.MemberIdRequest, call: Call
    ) -> pb.MemberChangeResponse:
        core = self.core
        target = v.member_id(request.id)
        await core.require_leader()
        if target == core.id:
            return pb.MemberChangeResponse(header=core.header())
        if target not in core.view.conf.voters:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"member {target} is not a voter and cannot lead; list the members to see the "
                "voters (promote a learner first)",
            )
        try:
            await core.loop.transfer_leader(target)
        except NotLeaderError as err:
            raise core.redirect(err.leader) if err.leader else unavailable(str(err)) from None
        except StoppedError:
            raise stopping_error() from None
        except RaftError as err:
            raise ServiceError(Code.FAILED_PRECONDITION, str(err)) from None
        bound_s = min(call.bound_s() * 0.9, 4 * core.view.election_timeout_s)
        try:
            async with asyncio.timeout(bound_s):
                while core.view.leader != target:
                    await first_done(core.hub.leader_change())
                    if core.hub.stopped:
                        raise stopping_error()
        except TimeoutError:
            raise unavailable(
                f"leadership did not move to member {target} within {bound_s:.1f} s (Raft gives "
                "up when the target does not catch up within an election timeout); check that "
                "it is reachable and caught up (`concordctl member list`), then retry"
            ) from None
        return pb.MemberChangeResponse(header=core.header())

    @unary
    async def Status(self, request: pb.StatusRequest, call: Call) -> pb.StatusResponse:
        view = self.core.view
        status = view.status()
        return pb.StatusResponse(
            header=self.core.header(),
            leader=status.leader,
            role=status.role.value,
            commit_index=status.commit,
            applied_index=view.applied_index,
            last_index=status.last_index,
            snapshot_index=view.snapshot.index,
            locked=False,
            last_term=view.term_at(status.last_index),
            voters=sorted(status.conf.voters),
            learners=sorted(status.conf.learners),
        )
