"""The administration calls of the `Client`: the member directory and status, membership
changes and leader transfer, join tokens, and one member's own keys (unlock, autolock,
unlock-key and data-key rotation), which go to the endpoint named and are never redirected."""

from __future__ import annotations

from coordinator.api.v1 import concord_pb2 as pb

from ._calls import Calls
from ._types import (
    AutolockChange,
    AutolockStatus,
    DataKeyRotation,
    JoinTokenInfo,
    MemberList,
    NewJoinToken,
    Status,
    UnlockKeyRotation,
)


class ClusterCalls(Calls):
    """`members`, `status`, `member_add_learner`, `member_promote`, `member_remove`,
    `transfer_leader`, the `join_token_*` calls, `unlock_member`, `autolock_status`,
    `set_autolock`, `rotate_unlock_key`, `rotate_data_key`."""

    # --- cluster -------------------------------------------------------------------------------

    async def members(self, *, serializable: bool = False) -> MemberList:
        """The member directory with each member's reachability. `serializable`: the
        answering member's own view, which works without a quorum (possibly stale)."""
        req = pb.MemberListRequest(serializable=serializable)
        resp = await self.call(lambda s: s.cluster.MemberList(req, timeout=self.attempt_timeout_s))
        return MemberList._from_pb(resp)

    async def status(self) -> Status:
        """The answering member's view (any member answers: not redirected to the leader)."""
        req = pb.StatusRequest()
        resp = await self.call(lambda s: s.cluster.Status(req, timeout=self.attempt_timeout_s))
        return Status._from_pb(resp)

    async def member_add_learner(
        self, member: int, name: str, peer_url: str, client_url: str, *, readmit: bool = False
    ) -> None:
        """Add a non-voting learner (it catches up before `member_promote`); a no-op if it
        already is one. `readmit`: the id was removed earlier and this is that member coming
        back, its earlier process gone (else a removed id is FAILED_PRECONDITION)."""
        req = pb.MemberAddLearnerRequest(
            id=member, name=name, peer_url=peer_url, client_url=client_url, readmit=readmit
        )
        await self.call(lambda s: s.cluster.MemberAddLearner(req, timeout=self.rpc_timeout_s))

    async def member_promote(self, member: int) -> None:
        """Make a caught-up learner a voter (FAILED_PRECONDITION while it lags)."""
        req = pb.MemberIdRequest(id=member)
        await self.call(lambda s: s.cluster.MemberPromote(req, timeout=self.rpc_timeout_s))

    async def member_remove(self, member: int) -> None:
        req = pb.MemberIdRequest(id=member)
        await self.call(lambda s: s.cluster.MemberRemove(req, timeout=self.rpc_timeout_s))

    async def transfer_leader(self, member: int) -> None:
        """Hand leadership to voter `member`; returns once it leads."""
        req = pb.MemberIdRequest(id=member)
        await self.call(lambda s: s.cluster.TransferLeader(req, timeout=self.timeout_s))

    # --- join tokens ---------------------------------------------------------------------------

    async def join_token_create(self) -> NewJoinToken:
        """A new join token: `.token` is shown this once (the cluster keeps its hash only).
        Not exactly-once: a retry after an unknown outcome may leave an unseen extra token."""
        req = pb.JoinTokenCreateRequest()
        resp = await self.call(
            lambda s: s.cluster.JoinTokenCreate(req, timeout=self.attempt_timeout_s)
        )
        return NewJoinToken(str(resp.token), JoinTokenInfo._from_pb(resp.info))

    async def join_token_list(self) -> list[JoinTokenInfo]:
        """Every join token's id and times (revoked ones included), oldest first."""
        req = pb.JoinTokenListRequest()
        resp = await self.call(
            lambda s: s.cluster.JoinTokenList(req, timeout=self.attempt_timeout_s)
        )
        return [JoinTokenInfo._from_pb(t) for t in resp.tokens]

    async def join_token_revoke(self, token_or_id: str) -> JoinTokenInfo:
        """Revoke a join token, given as its id or the token itself (idempotent)."""
        req = pb.JoinTokenRevokeRequest(id=token_or_id)
        resp = await self.call(
            lambda s: s.cluster.JoinTokenRevoke(req, timeout=self.attempt_timeout_s)
        )
        return JoinTokenInfo._from_pb(resp.info)

    # --- one member's keys (per endpoint, never redirected) --------------------------------------

    async def unlock_member(self, endpoint: str, unlock_key: str) -> int:
        """Give a locked member its unlock key; returns its member id."""
        req = pb.UnlockMemberRequest(unlock_key=unlock_key)
        resp = await self.call_endpoint(
            endpoint, lambda s: s.maintenance.Unlock(req, timeout=self.rpc_timeout_s)
        )
        return int(resp.member_id)

    async def autolock_status(self, endpoint: str) -> AutolockStatus:
        req = pb.AutolockStatusRequest()
        st = await self.call_endpoint(
            endpoint, lambda s: s.maintenance.AutolockStatus(req, timeout=self.rpc_timeout_s)
        )
        return AutolockStatus(
            int(st.member_id),
            str(st.member_name),
            str(st.phase),
            bool(st.locked),
            bool(st.autolock),
        )

    async def set_autolock(self, endpoint: str, enabled: bool) -> AutolockChange:
        """Turn the member's autolock on (the result carries its new unlock key, once) or
        off; `changed` is False if it already was so."""
        req = pb.SetAutolockRequest(enabled=enabled)
        resp = await self.call_endpoint(
            endpoint, lambda s: s.maintenance.SetAutolock(req, timeout=self.rpc_timeout_s)
        )
        return AutolockChange(
            int(resp.member_id), bool(resp.autolock), bool(resp.changed), str(resp.unlock_key)
        )

    async def rotate_unlock_key(self, endpoint: str) -> UnlockKeyRotation:
        req = pb.RotateUnlockKeyRequest()
        resp = await self.call_endpoint(
            endpoint, lambda s: s.maintenance.RotateUnlockKey(req, timeout=self.rpc_timeout_s)
        )
        return UnlockKeyRotation(int(resp.member_id), str(resp.unlock_key))

    async def rotate_data_key(self, endpoint: str) -> DataKeyRotation:
        """A new data key for the member at `endpoint`, and its data re-encrypted under it
        through a snapshot (the snapshot is written within the call: up to `rpc_timeout_s`)."""
        req = pb.RotateDataKeyRequest()
        resp = await self.call_endpoint(
            endpoint, lambda s: s.maintenance.RotateDataKey(req, timeout=self.rpc_timeout_s)
        )
        return DataKeyRotation(
            int(resp.member_id),
            int(resp.key_id),
            int(resp.snapshot_index),
            tuple(int(k) for k in resp.retired_key_ids),
        )
