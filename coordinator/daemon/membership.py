"""What a running member does for membership, beside the joiner's own side (`join.py`).

- **Lending the join services its authority** (`MemberAuthority`, `address_book`): the
  server's join services (`coordinator.server._join`) sign with this member's CA key and hand
  joiners this member's view of the address book.
- **Promotion** (`promote_when_caught_up`): a learner that joined asks the leader to make it
  a voter once it has caught up, unless `--join-as learner`.
- **Every member's directory entry** (`keep_directory_entry`). A joiner is listed in the member
  directory by its admission; the first members, bootstrapped from `--initial-cluster`, never
  were, so `concordctl member list` had only their ids. Each member, once running, makes sure
  the directory lists it as it advertises itself (name, peer and client URL): as the leader it
  proposes the entry itself, as a follower it asks the leader over the peer port
  (`Admission.RegisterSelf`, mutual TLS: its certificate's id only). An insecure follower has
  no such port to ask through; it is listed once it leads.
- **The first start of a new data dir** (`first_start_verdict`, `--join-if-new`): ask the
  first members whether a running cluster knew this member before bootstrapping it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import grpc

from coordinator.api.v1 import join_pb2 as jpb
from coordinator.api.v1 import join_pb2_grpc as jpb_grpc
from coordinator.fsm import Applied, FsmError, MemberUpsert
from coordinator.fsm import Member as DirectoryEntry
from coordinator.pki import (
    CertifiedKey,
    MemberTls,
)
from coordinator.raft import RaftError
from coordinator.runtime.tls import member_channel_credentials

log = logging.getLogger("concord.join")

_generated: Any = jpb_grpc  # untyped generated module


PROMOTE_POLL_S = 0.5
REGISTER_POLL_S = 0.5


# --- what a running member lends the join services ----------------------------------------------


def address_book(
    fallback: Mapping[int, str],
    directory: Iterable[DirectoryEntry],
    member_id: int,
    own_peer_url: str,
) -> dict[int, str]:
    """Member id -> peer URL (or host:port) of every member known: `--initial-cluster` (or a
    joined member's record), overridden by the replicated member directory; this member's
    own entry from the directory, else the fallback, else its advertised URL."""
    book = dict(fallback)
    book.update({m.id: m.peer_url for m in directory})
    if member_id not in book and own_peer_url:
        book[member_id] = own_peer_url
    return book


class MemberAuthority:
    """`coordinator.server._join.JoinAuthority` for a member process."""

    def __init__(
        self,
        *,
        cluster_id: str,
        tls: MemberTls,
        signing_ca: CertifiedKey | None,
        book: Callable[[], dict[int, str]],
        peers: Callable[[], dict[int, str]],
    ) -> None:
        self._cluster_id = cluster_id
        self._tls = tls
        self._signing_ca = signing_ca
        self._book = book
        self._peers = peers

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    @property
    def ca_pem(self) -> bytes:
        return self._tls.ca_pem

    @property
    def signing_ca(self) -> CertifiedKey | None:
        return self._signing_ca

    def address_book(self) -> dict[int, str]:
        return self._book()

    def peer_address(self, member_id: int) -> str | None:
        return self._peers().get(member_id)

    def peer_credentials(self) -> grpc.ChannelCredentials | None:
        return member_channel_credentials(self._tls)


# --- step 4: a caught-up learner asks to become a voter ------------------------------------------


async def promote_when_caught_up(
    member_id: int,
    status: Callable[[], Any],
    applied_index: Callable[[], int],
    peers: Callable[[], dict[int, str]],
    credentials: grpc.ChannelCredentials | None,
    *,
    poll_s: float = PROMOTE_POLL_S,
) -> None:
    """Until this member is a voter: once it is a learner that has applied everything it
    knows to be committed, ask the leader (on its peer port) to promote it. FAILED_PRECONDITION
    (still lagging), UNAVAILABLE and timeouts are retried; any other refusal is logged and
    ends the attempts (the member stays a learner; `concordctl member promote` remains)."""
    channels: dict[str, grpc.aio.Channel] = {}
    noted = ""
    try:
        while True:
            await asyncio.sleep(poll_s)
            st = status()
            if member_id in st.conf.voters:
                log.info("this member is a voter (term %d)", st.term)
                return
            if member_id not in st.conf.learners or st.leader in (0, member_id):
                continue
            if applied_index() < st.commit:
                continue
            address = peers().get(st.leader)
            if address is None:
                continue
            channel = channels.get(address)
            if channel is None:
                channel = channels[address] = (
                    grpc.aio.secure_channel(address, credentials)
                    if credentials is not None
                    else grpc.aio.insecure_channel(address)
                )
            stub = _generated.AdmissionStub(channel)
            try:
                await stub.PromoteSelf(jpb.PromoteSelfRequest(id=member_id), timeout=5.0)
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
                retry = (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if code in retry:
                    if details != noted:
                        log.info("not promoted yet (%s: %s); asking again", code.name, details)
                        noted = details
                    continue
                log.error(
                    "the leader refused to promote this member: %s: %s; it stays a learner "
                    "(`concordctl member promote %d` promotes it)",
                    code.name,
                    details,
                    member_id,
                )
                return
            log.info("promoted to voter by the leader, member %d", st.leader)
            return
    finally:
        for channel in channels.values():
            await channel.close()


# --- every member: its own entry in the member directory ----------------------------------------


async def keep_directory_entry(
    me: DirectoryEntry,
    status: Callable[[], Any],
    directory: Callable[[], Iterable[DirectoryEntry]],
    propose: Callable[[MemberUpsert], Awaitable[Applied]],
    *,
    keep_listed_name: bool = False,
    peers: Callable[[], dict[int, str]],
    credentials: grpc.ChannelCredentials | None,
    poll_s: float = REGISTER_POLL_S,
) -> None:
    """Until the replicated directory lists `me` exactly: once this member is in the
    configuration, propose the entry as the leader, or ask the leader (`RegisterSelf` on its
    peer port) as a follower with TLS. Transient failures (no leader, a lost proposal,
    UNAVAILABLE) are retried; a refusal (a name another member holds, a removed id) is
    logged and ends the attempts: the member serves on, unlisted. With `keep_listed_name`
    (no --name given) a name already listed for this id is kept (a restored backup's)."""
    channels: dict[str, grpc.aio.Channel] = {}
    noted = ""
    wanted = me
    try:
        while True:
            listed = {m.id: m for m in directory()}
            old = listed.get(me.id)
            if keep_listed_name and old is not None and old.name:
                wanted = replace(me, name=old.name)
            if old == wanted:
                return
            await asyncio.sleep(poll_s)
            st = status()
            if me.id not in st.conf.voters | st.conf.learners or st.leader == 0:
                continue
            upsert = MemberUpsert(wanted.id, wanted.name, wanted.peer_url, wanted.client_url)
            if st.leader == me.id:
                try:
                    applied = await propose(upsert)
                except RaftError:
                    continue  # lost the leadership or the proposal: look again
                if isinstance(applied.result, FsmError):
                    log.error("cannot list this member in the member directory: %s", applied.result)
                    return
                log.info("listed this member in the member directory as %s", upsert.name)
                continue
            address = peers().get(st.leader)
            if credentials is None or address is None:
                continue  # insecure: no peer-port service to ask; listed once it leads
            channel = channels.get(address)
            if channel is None:
                channel = channels[address] = grpc.aio.secure_channel(address, credentials)
            request = jpb.RegisterSelfRequest(
                id=upsert.id,
                name=upsert.name,
                peer_url=upsert.peer_url,
                client_url=upsert.client_url,
            )
            try:
                await _generated.AdmissionStub(channel).RegisterSelf(request, timeout=5.0)
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
                transient = (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.UNIMPLEMENTED,  # a leader of an older build: it may move
                    grpc.StatusCode.NOT_FOUND,  # its configuration may not have us yet
                )
                if code in transient:
                    if details != noted:
                        log.info(
                            "not listed in the member directory yet (%s: %s)", code.name, details
                        )
                        noted = details
                    continue
                log.error(
                    "the leader refused to list this member in the member directory: %s: %s",
                    code.name,
                    details,
                )
                return
            log.info("listed this member in the member directory through leader %d", st.leader)
    finally:
        for channel in channels.values():
            await channel.close()


# --- a new data dir of a first member: bootstrap only if no cluster knew it ---------------------

BOOTSTRAP = "bootstrap"
"""`first_start_verdict`: no running cluster knew this member: bootstrap from --initial-cluster."""
WAIT = "wait"
"""A running cluster no longer has this member in its configuration (it was removed): start
empty and wait to be added again as a learner."""
LOST = "lost"
"""A running cluster lists this member already: it ran before and its data are gone."""
UNSURE = "unsure"
"""Other members run but no leader answered: whether this member ran before is unknown."""

PROBE_TIMEOUT_S = 5.0


async def first_start_verdict(
    me: DirectoryEntry,
    peers: Mapping[int, str],
    credentials: grpc.ChannelCredentials,
    *,
    first_member: bool = True,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> tuple[str, str]:
    """(verdict, why) for a first member (`--initial-cluster` lists it) whose data dir is new,
    asked of the other first members' peer ports (`Admission.RegisterSelf`: only the leader
    answers, with this member's certificate as the credential):

    - the leader lists it exactly as it advertises itself: LOST. It ran before (members list
      themselves once running), so it may have voted and acknowledged entries it no longer
      has; bootstrapping again could let a committed entry be lost. A person must remove it
      first (`concordctl member remove ID`); it then comes back as a new learner;
    - the leader did not list it (and now does): BOOTSTRAP. The others formed the cluster
      before it ever started (a slow first pod), so an empty state is its true state;
    - the leader does not have it in its configuration (NOT_FOUND): WAIT, to be readmitted;
    - nobody listens on any peer port, or those that do have never committed anything and
      know no leader (`fresh`): no cluster has formed, BOOTSTRAP at once (first members
      that start together, or a little apart, all see this);
    - members listen but no leader answers (followers forward to theirs) within
      `timeout_s`: UNSURE, and the member does not start (it is asked again at its next
      start), because bootstrapping a member that ran before is the one unsafe choice.

    A later member (`first_member=False`: --initial-cluster does not list it) never
    bootstraps, and the operator lists it before it first runs, so a listing proves nothing:
    it is LOST only if the leader has it as a **voter** (only a member that ran and caught up
    is ever promoted); otherwise (a learner, not in the configuration, nobody answering) WAIT.
    """
    request = jpb.RegisterSelfRequest(
        id=me.id, name=me.name, peer_url=me.peer_url, client_url=me.client_url
    )
    clock = asyncio.get_running_loop()
    deadline = clock.time() + timeout_s
    channels = {i: grpc.aio.secure_channel(a, credentials) for i, a in peers.items() if i != me.id}
    try:
        while True:
            listening = fresh = False
            for peer, channel in channels.items():
                stub = _generated.AdmissionStub(channel)
                try:
                    answer = await stub.RegisterSelf(request, timeout=1.0)
                except grpc.aio.AioRpcError as err:
                    code, details = err.code(), err.details() or ""
                    if code is grpc.StatusCode.NOT_FOUND:
                        return WAIT, f"member {peer} answered: {details}"
                    if code is grpc.StatusCode.UNAVAILABLE and _refused(details):
                        continue
                    listening = True
                    continue
                if answer.fresh:
                    fresh = True
                    continue
                through = f"the cluster's leader (asked through member {peer})"
                if not first_member:
                    if answer.voter:
                        return LOST, f"{through} has this member as a voter: it ran before"
                    return WAIT, f"{through} has this member as a learner"
                if answer.changed:
                    return BOOTSTRAP, f"{through} had not listed this member: it never ran"
                return LOST, f"{through} lists this member already: it ran before"
            if not first_member and (not listening or clock.time() >= deadline):
                return WAIT, "no leader answered: a later member waits to be added"
            if not listening:
                return BOOTSTRAP, (
                    "the first members that run have committed nothing yet: no cluster formed"
                    if fresh
                    else "no other first member is running yet"
                )
            if clock.time() >= deadline:
                return UNSURE, f"other members run, but no leader answered within {timeout_s:g} s"
            await asyncio.sleep(0.3)
    finally:
        for channel in channels.values():
            await channel.close()


def _refused(details: str) -> bool:
    """Nothing listens there (yet): a connection refused or a name that does not resolve."""
    text = details.lower()
    return any(s in text for s in ("connection refused", "failed to connect", "dns resolution"))
