"""The one module that talks to the coordinator, through `coordinator.client` only.

It turns the client's calls into what `reconcile` reasons about (`LeaseObserved`,
`SequenceObserved`, `Unavailable`) and carries out a plan's actions. Every failure the
operator can wait out (no quorum, no member reachable, a deadline) becomes `Unavailable` with
the coordinator's own message, so the status can say exactly why; everything else (a refusal
a person must act on) is raised as `ConcordError`.

Mirroring reads are serializable (the answering member's own state, no read barrier): they
follow a watch event that member has already applied, a status is a mirror that the next
event corrects anyway, and a barrier per read costs the coordinator a quorum round each, which
under a churn of 1,000 locks was most of the operator's reconcile time. Declaring (the
records, the sequences) stays linearizable.

Three clients, on purpose: the reconciler's calls are short (a status must turn
Ready=False within seconds when the coordinator goes away), the watch stream and the
leadership keep-alive each run on their own so that a slow reconcile never delays either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from coordinator.client import (
    Client,
    ConcordError,
    EventType,
    InvalidArgument,
    Leadership,
    SealFailed,
    SealingKeys,
    credentials_from_tls_dir,
)
from coordinator.sealing import SealedRecord, sealed_record_key

from .membership import AddLearner, MemberChange, Promote, RemoveMember, TransferLeader
from .reconcile import (
    Action,
    ClusterObserved,
    CreateSequence,
    DeleteRecord,
    Holder,
    LeaseObserved,
    MemberView,
    ObjectRef,
    PutRecord,
    Reachability,
    RevokeLease,
    SequenceObserved,
    Unavailable,
    parse_record,
    watch_range,
)
from .sealed import PERMISSION_DENIED, NotUnsealed, Unsealed, Validated, reason_of

log = logging.getLogger(__name__)

WAITABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
"""Codes that mean "the coordinator cannot answer now", never "no"."""


def credentials(tls_dir: Path | None) -> grpc.ChannelCredentials | None:
    """Mutual TLS from a directory holding ca.pem and client.pem + client-key.pem (as
    `concordctl cluster init` writes them); None: plaintext (an --insecure coordinator)."""
    if tls_dir is None:
        return None
    try:
        return credentials_from_tls_dir(tls_dir)
    except InvalidArgument as err:
        raise ValueError(err.message) from None


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str
    """LOCK, UNLOCK, ELECTION or SEQUENCE."""
    name: str
    revision: int
    token: int
    """LOCK and ELECTION: the grant's fencing token (0 for an election left vacant)."""


@dataclass(frozen=True, slots=True)
class KnownRecord:
    """A configuration record the caller already knows (it wrote or read it last): the
    operator's leader is the only writer of records, so an event-triggered reconcile need not
    read it again. Resume, spec changes and recoveries read it afresh."""

    record: Mapping[str, Any] | None


class Gateway:
    def __init__(
        self,
        endpoints: Sequence[str],
        creds: grpc.ChannelCredentials | None,
        *,
        timeout_s: float = 3.0,
    ) -> None:
        self.endpoints = list(endpoints)
        self.creds = creds
        # Short: a call that cannot reach a quorum gives up in a few seconds and the object
        # shows Ready=False; the reconciler retries when the coordinator is back.
        self.client = Client(endpoints, credentials=creds, timeout_s=timeout_s, rpc_timeout_s=2.0)

    def new_client(self, timeout_s: float) -> Client:
        return Client(self.endpoints, credentials=self.creds, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.client.close()

    # --- observing -------------------------------------------------------------------------

    async def observe_lease(
        self,
        ref: ObjectRef,
        kind: str,
        grants_seen: int = 0,
        latest_token: int = 0,
        known: KnownRecord | None = None,
    ) -> LeaseObserved | Unavailable:
        try:
            record = await self._record(ref, known)
            if kind == "election":
                holders = await self._election_holders(ref.coordinator_name)
                waiters = 0
            else:
                holders, waiters = await self._lock_holders(ref.coordinator_name)
            return LeaseObserved(record, holders, waiters, grants_seen, latest_token)
        except ConcordError as err:
            return _unavailable_or_raise(err)

    async def observe_sequence(
        self, ref: ObjectRef, known: KnownRecord | None = None
    ) -> SequenceObserved | Unavailable:
        try:
            record = await self._record(ref, known)
            try:
                seq = await self.client.sequence_get(ref.coordinator_name)
            except ConcordError as err:
                if err.code == "NOT_FOUND":
                    return SequenceObserved(record, exists=False)
                raise
            return SequenceObserved(record, True, seq.next, seq.increment)
        except ConcordError as err:
            return _unavailable_or_raise(err)

    async def _record(self, ref: ObjectRef, known: KnownRecord | None) -> Mapping[str, Any] | None:
        if known is not None:
            return known.record
        return parse_record(await self._get(ref.config_key))

    async def _get(self, key: bytes) -> bytes | None:
        kv = await self.client.get(key)
        return bytes(kv.value) if kv is not None else None

    async def _lock_holders(self, name: str) -> tuple[tuple[Holder, ...], int]:
        info = await self.client.lock_info(name, serializable=True)
        holders = []
        for h in info.holders:
            remaining = await self._remaining_ms(h.lease)
            holders.append(Holder(h.lease, str(h.lease), h.fencing_token, h.acquired_ms, remaining))
        return tuple(holders), info.waiters

    async def _election_holders(self, name: str) -> tuple[Holder, ...]:
        leader = await self.client.leader(name, serializable=True)
        if leader is None:
            return ()
        identity = leader.value.decode("utf-8", errors="replace") or str(leader.lease)
        remaining = await self._remaining_ms(leader.lease)
        return (Holder(leader.lease, identity, leader.fencing_token, 0, remaining),)

    async def _remaining_ms(self, lease: int) -> int | None:
        try:
            return (await self.client.lease_time_to_live(lease)).remaining_ms
        except ConcordError as err:
            if err.code == "NOT_FOUND":
                return 0  # ended between the two reads: the next event shows it gone
            raise

    async def observe_cluster(self) -> ClusterObserved | Unavailable:
        """Membership as the leader sees it; without a quorum, as any member still answering
        sees it (no leader: every voter counts as unreachable, so the quorum shows Lost)."""
        endpoints = tuple(self.endpoints)
        try:
            try:
                members = await self.client.members()
                status = await self.client.status()
                commit = int(status.commit_index)
            except ConcordError as err:
                if err.code not in WAITABLE:
                    raise
                members = await self.client.members(serializable=True)
                commit = 0
                lost = True
            else:
                lost = False
        except ConcordError as err:
            return _unavailable_or_raise(err)
        shown: dict[str, Reachability] = {"leader": "Leader", "reachable": "Reachable"}
        views = tuple(
            MemberView(
                m.id,
                m.name or f"member-{m.id}",
                m.client_url,
                m.role == "voter",
                "Unreachable" if lost else shown.get(m.status, "Unreachable"),
                m.match_index,
                m.peer_url,
            )
            for m in members.members
        )
        return ClusterObserved(views, members.term, commit, endpoints)

    async def probe(self) -> Unavailable | None:
        """A linearizable read: None if the coordinator has a quorum and answers."""
        try:
            await self.client.get(b"concord.dev/v1alpha1/probe")
        except ConcordError as err:
            return _unavailable_or_raise(err)
        return None

    # --- sealed secrets --------------------------------------------------------------------

    async def unseal_all(
        self, namespace: str, name: str, envelopes: Mapping[str, bytes]
    ) -> tuple[Unsealed | NotUnsealed | Unavailable, int]:
        """Every value unsealed as the Secret namespace/name, or the first that is not (and
        why), with how many did unseal. The plaintexts live only in the answer: nothing here
        logs them."""
        values: dict[str, bytes] = {}
        key_ids: set[str] = set()
        try:
            for key, envelope in sorted(envelopes.items()):
                try:
                    done = await self.client.unseal(envelope, namespace, name)
                except SealFailed as err:
                    return NotUnsealed(key, reason_of(err.reason.name), err.message), len(values)
                values[key] = done.plaintext
                key_ids.add(done.key_id)
        except ConcordError as err:
            if err.code == "PERMISSION_DENIED":
                message = (
                    f"the coordinator refused to unseal for this operator ({err.message}); its "
                    "--tls-dir must hold the operator identity (the operator/ directory "
                    "concordctl cluster init writes, role concord://role/operator)"
                )
                return NotUnsealed(key, PERMISSION_DENIED, message), len(values)
            return _unavailable_or_raise(err), len(values)
        return Unsealed(values, tuple(sorted(key_ids))), len(values)

    async def validate_all(
        self, namespace: str, name: str, envelopes: Mapping[str, bytes]
    ) -> Validated | NotUnsealed | Unavailable:
        """Whether every value would unseal as namespace/name (ValidateSealed: no plaintext
        comes back), or the first that would not, and why."""
        keys = sorted(envelopes)
        try:
            checks = await self.client.validate_sealed(
                [(envelopes[k], namespace, name) for k in keys]
            )
        except ConcordError as err:
            return _unavailable_or_raise(err)
        for key, check in zip(keys, checks, strict=True):
            if check.failure is not None:
                return NotUnsealed(key, reason_of(check.failure.name), check.message)
        return Validated(tuple(sorted({c.key_id for c in checks})))

    async def publish_sealed(
        self, ref: ObjectRef, scope: str, envelopes: Mapping[str, bytes]
    ) -> Unavailable | None:
        """Keep the SealedSecret's ciphertext (never plaintext) in the coordinator, under
        `k8s/<namespace>/sealedsecrets/<name>`, for the sidecars that deliver it as files
        (coordinator.sealing.SealedRecord). An equal record is not written again, so a resume
        does not wake every sidecar."""
        key = sealed_record_key(ref.namespace, ref.name)
        value = SealedRecord(envelopes, uid=ref.uid, generation=ref.generation, scope=scope)
        encoded = value.encode()
        try:
            if await self._get(key) != encoded:
                await self.client.put(key, encoded)
        except ConcordError as err:
            return _unavailable_or_raise(err)
        return None

    async def withdraw_sealed(self, ref: ObjectRef) -> Unavailable | None:
        """Delete the SealedSecret's record (its finalizer)."""
        try:
            await self.client.delete(sealed_record_key(ref.namespace, ref.name))
        except ConcordError as err:
            return _unavailable_or_raise(err)
        return None

    async def sealing_keys(self) -> SealingKeys | Unavailable:
        """The current sealing certificate (the first call on a new cluster makes the key)."""
        try:
            return await self.client.sealing_certificate()
        except ConcordError as err:
            return _unavailable_or_raise(err)

    # --- acting ----------------------------------------------------------------------------

    async def execute(self, actions: Sequence[Action]) -> Unavailable | None:
        """Run a plan's actions in order; each is idempotent, so after a failure (or a crash)
        running the next plan again finishes the job without doing anything twice."""
        try:
            for action in actions:
                await self._execute(action)
        except ConcordError as err:
            return _unavailable_or_raise(err)
        return None

    async def _execute(self, action: Action) -> None:
        match action:
            case PutRecord(key, value):
                await self.client.put(key, value)
            case DeleteRecord(key):
                await self.client.delete(key)
            case CreateSequence(name, start, increment):
                try:
                    await self.client.sequence_create(name, start, increment)
                except ConcordError as err:
                    # A retry of our own create whose answer was lost, or a race with another
                    # writer: the next observation tells which, and reconcile decides.
                    if err.code != "ALREADY_EXISTS":
                        raise
            case RevokeLease(lease):
                try:
                    await self.client.lease_revoke(lease)
                except ConcordError as err:
                    if err.code != "NOT_FOUND":
                        raise

    async def change_membership(self, change: MemberChange) -> Unavailable | str | None:
        """Make one membership change through the leader (the Cluster API). None when done;
        Unavailable when it can be retried as it is (no quorum, a deadline, the learner not
        caught up yet); else the coordinator's refusal, for a person to act on (an id that
        was removed earlier and is never reused, say)."""
        client = self.client
        try:
            match change:
                case AddLearner(member, name, peer_url, client_url):
                    # An ordinal's id may have been removed by an earlier scale-down: it is the
                    # same member coming back (same certificate, its own claim), and the
                    # StatefulSet runs at most one pod per ordinal, so its old process is gone.
                    await client.member_add_learner(
                        member, name, peer_url, client_url, readmit=True
                    )
                case Promote(member):
                    await client.member_promote(member)
                case RemoveMember(member):
                    await client.member_remove(member)
                case TransferLeader(member):
                    await client.transfer_leader(member)
        except ConcordError as err:
            if err.code in WAITABLE:
                return Unavailable(err.message)
            if isinstance(change, Promote | TransferLeader) and err.code == "FAILED_PRECONDITION":
                return Unavailable(err.message)  # lagging, or leadership moved: look again
            return f"{err.code}: {err.message}"
        return None

    # --- streams ---------------------------------------------------------------------------

    async def events(self, client: Client) -> AsyncIterator[WatchEvent]:
        """Lock, election and sequence events of every mapped name, from now on."""
        key, end = watch_range()
        kinds = {
            EventType.LOCK: "LOCK",
            EventType.UNLOCK: "UNLOCK",
            EventType.ELECTION: "ELECTION",
            EventType.SEQUENCE: "SEQUENCE",
        }
        async for event in client.watch(key, end):
            kind = kinds.get(event.type)
            if kind is not None:
                yield WatchEvent(kind, event.name, int(event.revision), int(event.kv.version))


class Leader:
    """This replica's leadership of the operator election, through Concord's own election.

    `campaign` blocks until this replica leads, with a coordinator lease kept alive by a
    background task. `valid()` is True only while the lease is surely alive: until the last
    successful keep-alive's send time plus the TTL (so never longer than the coordinator keeps
    it). Anything that writes checks it first. `deposed` is set for good the moment the lease
    is known to be gone (NOT_FOUND) or another leader is seen: the replica stops.
    """

    def __init__(self, gateway: Gateway, election: str, identity: str, ttl_s: float) -> None:
        self.gateway = gateway
        self.election = election
        self.identity = identity
        self.ttl_s = ttl_s
        self.client = gateway.new_client(timeout_s=max(1.0, ttl_s / 3))
        self.leadership: Leadership | None = None
        self.valid_until = 0.0
        self.deposed = asyncio.Event()
        self.deposed_reason = ""
        self._tasks: list[asyncio.Task[None]] = []

    def valid(self) -> bool:
        return (
            self.leadership is not None
            and not self.deposed.is_set()
            and asyncio.get_running_loop().time() < self.valid_until
        )

    @property
    def fencing_token(self) -> int:
        return self.leadership.fencing_token if self.leadership else 0

    async def campaign(self) -> Leadership:
        """Block until this replica leads. A lease that ends while waiting in line (the
        coordinator was out of reach for longer than its TTL) is replaced and the campaign
        starts again: nothing here is fatal but a refusal a person must act on."""
        while True:
            lease = await self._grant()
            self.valid_until = asyncio.get_running_loop().time() + self.ttl_s
            # Keep the lease alive while waiting in line too: a campaign can wait a long time.
            keeper = asyncio.create_task(self._keep_alive(lease))
            campaign = asyncio.create_task(self._campaign(lease))
            await asyncio.wait({keeper, campaign}, return_when=asyncio.FIRST_COMPLETED)
            if campaign.done() and campaign.exception() is None:
                self.leadership = campaign.result()
                self._tasks += [keeper, asyncio.create_task(self._observe())]
                return self.leadership
            for task in (keeper, campaign):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConcordError):
                    await task
            err = campaign.exception() if campaign.done() and not campaign.cancelled() else None
            if err is not None and not (isinstance(err, ConcordError) and err.code == "NOT_FOUND"):
                raise err
            log.warning("the campaign's lease %d ended before it won; campaigning again", lease)

    async def _grant(self) -> int:
        while True:
            try:
                return await self.client.lease_grant(int(self.ttl_s * 1000))
            except ConcordError as err:
                if err.code not in WAITABLE:
                    raise
                log.warning("cannot reach the coordinator to campaign yet: %s", err.message)

    async def _campaign(self, lease: int) -> Leadership:
        while True:
            try:
                return await self.client.campaign(self.election, lease, self.identity.encode())
            except ConcordError as err:
                if err.code not in WAITABLE:
                    raise

    async def _keep_alive(self, lease: int) -> None:
        """Renew at a quarter of the TTL. Returns when the lease has ended: before the
        leadership was won that only restarts the campaign; after, it deposes this replica."""
        loop = asyncio.get_running_loop()
        while not self.deposed.is_set():
            sent = loop.time()
            try:
                await self.client.lease_keepalive_once(lease)
                self.valid_until = sent + self.ttl_s
            except ConcordError as err:
                if err.code == "NOT_FOUND":
                    if self.leadership is not None:
                        self._depose(f"the operator's coordinator lease {lease} has ended")
                    return
                log.warning("leadership keep-alive failed (will retry): %s", err.message)
            await asyncio.sleep(self.ttl_s / 4)

    async def _observe(self) -> None:
        """Another leader in the election means this one is gone, whatever its lease says."""
        watcher = self.gateway.new_client(timeout_s=3600.0)
        try:
            async for event in watcher.watch(self.election.encode()):
                if event.type is not EventType.ELECTION or self.leadership is None:
                    continue
                if int(event.kv.lease) != self.leadership.lease:
                    self._depose(
                        f"another replica leads {self.election!r} (lease {event.kv.lease})"
                    )
                    return
                if int(event.kv.version) == 0:  # vacant: this replica's leadership ended
                    self._depose(f"the election {self.election!r} lost this replica as leader")
                    return
        except ConcordError as err:
            log.warning("election watch ended: %s", err.message)
        finally:
            await watcher.close()

    def _depose(self, reason: str) -> None:
        if not self.deposed.is_set():
            self.deposed_reason = reason
            self.valid_until = 0.0
            self.deposed.set()
            log.error("deposed: %s", reason)

    async def resign(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, ConcordError):
                await task
        if self.leadership is not None and not self.deposed.is_set():
            with contextlib.suppress(ConcordError):
                await self.client.lease_revoke(self.leadership.lease)
        await self.client.close()


def _unavailable_or_raise(err: ConcordError) -> Unavailable:
    if err.code in WAITABLE:
        return Unavailable(err.message)
    raise err
