"""Joining a running cluster over the network, and the join tokens that allow it.

**Tokens** (`JoinTokenCreate`, `JoinTokenList`, `JoinTokenRevoke` of the Cluster service, in
`_join_tokens.py`, on the client port: a client certificate is needed). A new token is made by
the member that answers (it needs the cluster CA, whose fingerprint the token carries), its
secret's hash is committed through the log (`JoinTokenAdd`), and the token is returned once: no
member stores the secret. Creating is not exactly-once: a retry after an unknown outcome may
leave an extra valid token nobody has seen (list and revoke it); a retry can never return a
token that was not committed.

**Joining** takes three members' worth of roles, which may be one member:

1. the *joiner* (`coordinator.daemon.join`) fetches the CA from a member's join port
   (`--join-listen`), checks it against the fingerprint in its token, and calls
   `Join(token, CSR, id, name, URLs)` over TLS that trusts that CA only;
2. the member that *received* it (this module's `JoinService`) checks what it can alone (it
   must hold the CA key, `--ca-key-file`; the token must name this cluster's CA; the CSR must
   be self-signed), then asks the leader to admit the member: itself if it leads, else over
   the leader's peer port with its own member certificate (`Admission.Admit`). Forwarding,
   not redirecting: a joiner knows one address, and a leader's join port may not be
   reachable (or configured) at all;
3. the *leader* (`_Admitter`) verifies the token against the replicated table after a read
   barrier (unknown or wrong secret, revoked, another cluster's CA: PERMISSION_DENIED), picks
   the id (the next after every id in the configuration and the member directory) or checks
   the one asked for, checks the name, records the member in the directory and adds it as a
   learner, both committed before it answers, one join at a time.

The receiving member then signs the CSR as a member certificate bound to the new id
(`tls.sign_member_csr`: a `concord://member/<id>` URI, so the peer port lets it speak for that
id only) and answers with the certificate, the CA, the cluster id, the id and name, and the
address book. If the leader's log still starts at index 0, the answer also carries the
configuration at index 0, so that the joiner's empty WAL starts where everyone's does;
otherwise the leader sends the joiner a snapshot, which carries it.

A record that a half-finished join left in the directory (its learner change never
committed) is resumed by a retry with the same name and peer URL; anything else already
holding the id or the name is ALREADY_EXISTS, with what to do about it.

**The first members' directory entries.** Members bootstrapped from `--initial-cluster` were
never admitted, so the directory knew only their ids. Each member therefore makes sure of its
own entry (`coordinator.daemon.membership.keep_directory_entry`): a leader proposes it, a follower
asks the leader over the peer port (`Admission.RegisterSelf`, its own id only, like
PromoteSelf), and `concordctl member list` shows every member's name and URLs.

**Promotion.** A joined learner that has caught up asks the leader over the peer port to make
it a voter (`Admission.PromoteSelf`): the leader answers FAILED_PRECONDITION while it lags
(Raft refuses to promote a learner that has not caught up), and a member whose certificate is
bound to an id may promote only itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grpc

from coordinator.api.v1 import join_pb2 as jpb
from coordinator.api.v1 import join_pb2_grpc as jpb_grpc
from coordinator.fsm import (
    Member,
    MemberUpsert,
    RevisionResult,
)
from coordinator.pki import (
    CertifiedKey,
    JoinToken,
    JoinTokenError,
    JoinTokenRefusedError,
    StoredToken,
    TlsError,
    check_ca_fingerprint,
    check_csr,
    sign_member_csr,
    verify_join_token,
)
from coordinator.raft import ConfChange, ConfChangeType
from coordinator.runtime.loop import RaftLoop
from coordinator.runtime.raft_servicer import certified_member_id, peer_refusal

from . import _validate as v
from ._core import Core, ServiceConfig
from ._errors import Code, ServiceError, invalid, unavailable
from ._rpc import Call, Servicer, unary

log = logging.getLogger("concord.join")

_generated: Any = jpb_grpc  # untyped generated module


class JoinAuthority(Protocol):
    """What the join services need from their member process
    (`coordinator.daemon.membership.MemberAuthority` provides it)."""

    @property
    def cluster_id(self) -> str: ...

    @property
    def ca_pem(self) -> bytes:
        """The cluster CA certificate."""
        ...

    @property
    def signing_ca(self) -> CertifiedKey | None:
        """The CA with its key (`--ca-key-file`); None: this member cannot sign."""
        ...

    def address_book(self) -> dict[int, str]:
        """Member id -> peer URL (or host:port) of every member this one knows, itself
        included."""
        ...

    def peer_address(self, member_id: int) -> str | None:
        """host:port of a member's peer port, or None if unknown."""
        ...

    def peer_credentials(self) -> grpc.ChannelCredentials | None:
        """This member's own credentials for dialing a peer port (None: --insecure)."""
        ...


# --- the leader's side ---------------------------------------------------------------------------


class _Admitter:
    """Admits members and promotes learners on the leader, one change at a time."""

    def __init__(self, core: Core, authority: JoinAuthority) -> None:
        self.core = core
        self.authority = authority
        self._lock = asyncio.Lock()
        """One admission or promotion at a time: picking an id and claiming it must not
        interleave with another join."""

    def _check_leading(self) -> None:
        if not self.core.view.is_leader:
            raise unavailable(
                f"member {self.core.id} is not the leader (any more): leadership moved while "
                "the join was on its way; retry the join"
            )

    def check_token(self, token: JoinToken) -> None:
        stored = [
            StoredToken(t.id, t.secret_sha256.hex(), t.created_ms, t.revoked_ms)
            for t in self.core.fsm.join_tokens()
        ]
        try:
            verify_join_token(token, self.authority.ca_pem, stored)
        except JoinTokenRefusedError as err:
            raise ServiceError(Code.PERMISSION_DENIED, str(err)) from None

    async def admit(self, request: jpb.AdmitRequest) -> jpb.AdmitResponse:
        token = _parse_token(request.token)
        if request.id:
            v.member_id(request.id)
        if request.name:
            v.name(request.name, "member")
        core = self.core
        self._check_leading()
        async with self._lock:
            await core.require_leader()  # a read barrier: the table is current
            self.check_token(token)
            member, name, resumed = self._claim(request)
            upsert = MemberUpsert(member, name, request.peer_url, request.client_url)
            applied = await core.propose(upsert)
            core.expect(applied, RevisionResult)
            index = applied.index
            conf = core.view.conf
            if member not in conf.learners and member not in conf.voters:
                changed = await core.change_membership(
                    ConfChange(ConfChangeType.ADD_LEARNER, member)
                )
                index = changed.index
            log.info(
                "admitted member %d (%s, peer %s) as a learner with join token %s%s",
                member,
                name,
                request.peer_url,
                token.id,
                " (resuming an unfinished join)" if resumed else "",
            )
            snap = core.view.snapshot
            return jpb.AdmitResponse(
                member_id=member,
                name=name,
                peers=self.authority.address_book(),
                log_start_known=snap.index == 0,
                log_start_voters=sorted(snap.conf.voters) if snap.index == 0 else [],
                log_start_learners=sorted(snap.conf.learners) if snap.index == 0 else [],
                raft_index=index,
            )

    def _claim(self, request: jpb.AdmitRequest) -> tuple[int, str, bool]:
        """(id, name, resumed): the id and name the new member gets, checked free."""
        conf = self.core.view.conf
        in_conf = conf.voters | conf.learners
        directory = {m.id: m for m in self.core.fsm.members()}
        by_name = {m.name: m for m in directory.values()}
        wanted = int(request.id)
        if request.name and request.name in by_name:
            holder = by_name[request.name]
            if (
                holder.id not in in_conf
                and holder.peer_url == request.peer_url
                and wanted in (0, holder.id)
            ):
                return holder.id, holder.name, True  # a join that stopped half-way
            raise ServiceError(
                Code.ALREADY_EXISTS,
                f"member name {request.name!r} belongs to member {holder.id} (peer "
                f"{holder.peer_url}); choose another --name, or, if member {holder.id} is an "
                "earlier, unfinished join of this member, remove it first (`concordctl member "
                f"remove {holder.id}`) and join again",
            )
        taken = in_conf | set(directory)
        removed = self.core.fsm.removed_member_ids()
        if wanted:
            if wanted in removed:
                raise ServiceError(
                    Code.FAILED_PRECONDITION,
                    f"member id {wanted} was removed from this cluster and is never reused; "
                    "choose another --id, or --id 0 to let the cluster pick the next free one",
                )
            if wanted in taken:
                role = (
                    "a voter"
                    if wanted in conf.voters
                    else "a learner"
                    if wanted in conf.learners
                    else "in the member directory"
                )
                raise ServiceError(
                    Code.ALREADY_EXISTS,
                    f"member id {wanted} is taken ({role}); choose another --id, or --id 0 to "
                    "let the cluster pick the next free one",
                )
            member = wanted
        else:
            member = max(taken | removed, default=0) + 1
        name = request.name or f"member-{member}"
        if name in by_name:
            raise ServiceError(
                Code.ALREADY_EXISTS,
                f"member name {name!r} belongs to member {by_name[name].id}; give the joining "
                "member a --name",
            )
        return member, name, False

    async def promote(self, member: int) -> jpb.PromoteSelfResponse:
        core = self.core
        self._check_leading()
        async with self._lock:
            await core.require_leader()
            conf = core.view.conf
            if member in conf.voters:
                return jpb.PromoteSelfResponse(already_voter=True)
            if member not in conf.learners:
                raise ServiceError(
                    Code.NOT_FOUND,
                    f"member {member} is not a learner of this cluster (removed, or never "
                    "admitted); it cannot be promoted",
                )
            applied = await core.change_membership(ConfChange(ConfChangeType.PROMOTE, member))
            log.info("promoted member %d to voter at its request", member)
            return jpb.PromoteSelfResponse(raft_index=applied.index)

    async def register(self, request: jpb.RegisterSelfRequest) -> jpb.RegisterSelfResponse:
        """Record a member of the configuration in the directory as it describes itself."""
        member = v.member_id(request.id)
        name = v.name(request.name, "member")
        core = self.core
        self._check_leading()
        async with self._lock:  # not between a join's id claim and its directory entry
            await core.require_leader()
            conf = core.view.conf
            if member not in conf.voters | conf.learners:
                raise ServiceError(
                    Code.NOT_FOUND,
                    f"member {member} is not in this cluster's configuration (removed, or "
                    "never admitted): only a member can list itself in the directory",
                )
            voter = member in conf.voters
            wanted = Member(member, name, request.peer_url, request.client_url)
            if wanted in core.fsm.members():
                return jpb.RegisterSelfResponse(changed=False, voter=voter)
            upsert = MemberUpsert(member, name, request.peer_url, request.client_url)
            applied = await core.propose(upsert)
            core.expect(applied, RevisionResult)
            log.info(
                "member %d registered itself in the directory as %s (peer %s, client %s)",
                member,
                name,
                request.peer_url,
                request.client_url,
            )
            return jpb.RegisterSelfResponse(changed=True, raft_index=applied.index, voter=voter)


def _parse_token(text: str) -> JoinToken:
    if not text.strip():
        raise invalid("a join needs a join token (`concordctl join-token create` makes one)")
    try:
        return JoinToken.parse(text)
    except JoinTokenError as err:
        raise invalid(str(err)) from None


def url_host(url: str, what: str) -> str:
    """The host of `scheme://host:port` (an IPv6 address without its brackets)."""
    scheme, sep, rest = url.partition("://")
    host, colon, port = rest.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if (
        not sep
        or not scheme
        or not colon
        or not host
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or any(c.isspace() or c == "/" for c in host)
    ):
        raise invalid(
            f"{what} {url!r} must look like scheme://host:port (e.g. https://10.0.0.4:7071)"
        )
    return host


# --- services ------------------------------------------------------------------------------------


class JoinService(Servicer):
    """concord.v1.Join, on the join port (no client certificate)."""

    def __init__(self, services: JoinServices) -> None:
        super().__init__(services.core.cfg.deadline_s)
        self._services = services

    @unary
    async def Join(self, request: jpb.JoinRequest, call: Call) -> jpb.JoinResponse:
        services = self._services
        authority = services.authority
        core = services.core
        signer = authority.signing_ca
        if signer is None:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"member {core.id} cannot sign certificates: it was started without "
                "--ca-key-file; join through a member started with --ca-key-file (the cluster "
                "CA key)",
            )
        token = _parse_token(request.token)
        try:
            check_ca_fingerprint(token, authority.ca_pem)
        except JoinTokenError as err:
            raise ServiceError(Code.PERMISSION_DENIED, str(err)) from None
        try:
            csr = check_csr(bytes(request.csr))
        except TlsError as err:
            raise invalid(str(err)) from None
        if request.id:
            v.member_id(request.id)
        hosts = [
            url_host(request.peer_url, "peer_url"),
            url_host(request.client_url, "client_url"),
        ]
        admit = jpb.AdmitRequest(
            token=request.token,
            id=request.id,
            name=request.name,
            peer_url=request.peer_url,
            client_url=request.client_url,
        )
        admitted = await services.admit_at_leader(admit, call)
        certificate = sign_member_csr(
            signer, csr, member_id=admitted.member_id, name=admitted.name, hosts=hosts
        )
        log.info("signed the certificate of member %d (%s)", admitted.member_id, admitted.name)
        return jpb.JoinResponse(
            certificate=certificate,
            ca=authority.ca_pem,
            cluster_id=authority.cluster_id,
            member_id=admitted.member_id,
            name=admitted.name,
            peers=dict(admitted.peers),
            log_start_known=admitted.log_start_known,
            log_start_voters=list(admitted.log_start_voters),
            log_start_learners=list(admitted.log_start_learners),
        )


class AdmissionService(Servicer):
    """concord.v1.Admission, on the peer port: member certificates only."""

    def __init__(self, services: JoinServices) -> None:
        super().__init__(services.core.cfg.deadline_s)
        self._services = services
        self._admitter = services.admitter

    async def Admit(
        self,
        request: jpb.AdmitRequest,
        context: Any,  # noqa: ANN401 (grpc's context)
    ) -> jpb.AdmitResponse:
        await _require_member(context)
        return await self._admit(request, context)

    async def PromoteSelf(
        self,
        request: jpb.PromoteSelfRequest,
        context: Any,  # noqa: ANN401 (grpc's context)
    ) -> jpb.PromoteSelfResponse:
        bound = await _require_member(context)
        if bound is not None and bound != request.id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of member {bound} cannot ask to promote member {request.id}: "
                "a member may promote only itself (use `concordctl member promote`)",
            )
        return await self._promote(request, context)

    async def RegisterSelf(
        self,
        request: jpb.RegisterSelfRequest,
        context: Any,  # noqa: ANN401 (grpc's context)
    ) -> jpb.RegisterSelfResponse:
        bound = await _require_member(context)
        if bound is not None and bound != request.id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of member {bound} cannot register member {request.id}: a "
                "member may list only itself (use `concordctl member add` for another)",
            )
        return await self._register(request, context)

    @unary
    async def _register(
        self, request: jpb.RegisterSelfRequest, call: Call
    ) -> jpb.RegisterSelfResponse:
        return await self._services.register_at_leader(request, call)

    @unary
    async def _admit(self, request: jpb.AdmitRequest, call: Call) -> jpb.AdmitResponse:
        return await self._admitter.admit(request)

    @unary
    async def _promote(
        self, request: jpb.PromoteSelfRequest, call: Call
    ) -> jpb.PromoteSelfResponse:
        return await self._admitter.promote(v.member_id(request.id))


async def _require_member(context: Any) -> int | None:  # noqa: ANN401 (grpc's context)
    """Abort unless the caller holds a member certificate; its bound id (None: unbound)."""
    auth: Mapping[str, Sequence[bytes]] = context.auth_context()
    refusal = peer_refusal(auth)
    if refusal:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
    return certified_member_id(auth)


class JoinServices:
    """The join port (Join) and the peer-port half (Admission) of one member, over its loop.

    `add_to_peer_server` before the peer server starts; `listen` for the join port;
    `stop` when the member stops."""

    def __init__(
        self, loop: RaftLoop, authority: JoinAuthority, config: ServiceConfig | None = None
    ) -> None:
        self.core = Core(loop, config or ServiceConfig(deadline_s=10.0))
        self.authority = authority
        self.admitter = _Admitter(self.core, authority)
        self._server: grpc.aio.Server | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.port = 0
        """The join port actually bound (0: not listening)."""

    def add_to_peer_server(self, server: grpc.aio.Server) -> None:
        _generated.add_AdmissionServicer_to_server(AdmissionService(self), server)

    async def listen(self, address: str, credentials: grpc.ServerCredentials) -> int:
        """Serve the Join service on `address` (TLS, no client certificate)."""
        server = grpc.aio.server()
        _generated.add_JoinServicer_to_server(JoinService(self), server)
        try:
            port = server.add_secure_port(address, credentials)
        except RuntimeError as err:
            raise OSError(f"cannot listen on {address} for the join server: {err}") from None
        if not port:
            raise OSError(f"cannot listen on {address} for the join server (in use?)")
        await server.start()
        self._server = server
        self.port = int(port)
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self.core.close()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            credentials = self.authority.peer_credentials()
            channel = (
                grpc.aio.secure_channel(address, credentials)
                if credentials is not None
                else grpc.aio.insecure_channel(address)
            )
            self._channels[address] = channel
        return channel

    async def admit_at_leader(self, request: jpb.AdmitRequest, call: Call) -> jpb.AdmitResponse:
        """Admit on the leader: here if this member leads, else over the leader's peer port."""
        core = self.core
        await core.read(False)  # a leader exists and this member hears from it
        leader = core.view.leader
        if leader == core.id:
            return await self.admitter.admit(request)
        address = self.authority.peer_address(leader) if leader else None
        if address is None:
            raise unavailable(
                f"member {core.id} knows no address for the leader (member {leader}); retry"
            )
        stub = _generated.AdmissionStub(self._channel(address))
        try:
            response: jpb.AdmitResponse = await stub.Admit(
                request, timeout=max(0.5, call.bound_s() * 0.9)
            )
        except grpc.aio.AioRpcError as err:
            raise _relayed(err, leader, address) from None
        return response

    async def register_at_leader(
        self, request: jpb.RegisterSelfRequest, call: Call
    ) -> jpb.RegisterSelfResponse:
        """RegisterSelf on the leader: here if this member leads, else forwarded over the
        leader's peer port with this member's certificate (the leader checks that the id is
        in its configuration; a first member whose data dir is new asks any peer it knows,
        `daemon.membership.first_start_verdict`, and the leader may be a member it does not)."""
        core = self.core
        if core.view.leader == 0 and core.view.commit_index == 0:
            # No cluster has formed: nothing committed here, no leader to ask. Said as such,
            # so that a first member starting late need not wait for a leader that needs it.
            return jpb.RegisterSelfResponse(fresh=True)
        await core.read(False)  # a leader exists and this member hears from it
        leader = core.view.leader
        if leader == core.id:
            return await self.admitter.register(request)
        address = self.authority.peer_address(leader) if leader else None
        if address is None:
            raise unavailable(
                f"member {core.id} knows no address for the leader (member {leader}); retry"
            )
        channel = self._channel(address)
        try:
            response: jpb.RegisterSelfResponse = await _generated.AdmissionStub(
                channel
            ).RegisterSelf(request, timeout=max(0.5, call.bound_s() * 0.9))
        except grpc.aio.AioRpcError as err:
            raise _relayed(err, leader, address) from None
        return response


def _relayed(err: grpc.aio.AioRpcError, leader: int, address: str) -> ServiceError:
    """The leader's refusal, passed on as it is; a failure to reach it as UNAVAILABLE."""
    details = err.details() or ""
    name = err.code().name
    if name in Code.__members__ and name not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return ServiceError(Code[name], details)
    return unavailable(
        f"could not complete the join through the leader (member {leader} at {address}): "
        f"{name}: {details}; retry"
    )
