"""concord.v1.Maintenance: unlock a locked member, and manage its autolock and unlock key.

Encryption at rest is per member (coordinator.storage.crypto): each member has its own key
ring, wrapped either under a key file on its disk or, with autolock, under a key derived from
an unlock key that exists only in memory. So every call here acts on the member that answers
it and is never redirected; the CLI calls each endpoint in turn and reports per member.

The service is reachable before the member has opened its data directory (see `_gateway.py`):

- Unlock hands a key to a *locked* member (`MemberKeys.unlock`), which opens its key ring
  with it on the spot, so the answer says whether the key was right: INVALID_ARGUMENT for
  text that is not an unlock key (mistyped: its checksum fails, nothing was tried),
  PERMISSION_DENIED "wrong unlock key" for a well-formed key that does not open this
  member's ring, FAILED_PRECONDITION when the member is not locked. The member then goes on
  starting by itself.
- AutolockStatus answers in every phase.
- RotateDataKey asks the member's Raft loop to switch its WAL to a new data key and
  re-encrypt through a snapshot (`RaftLoop.rotate_data_key`), within the call's deadline.
- SetAutolock and RotateUnlockKey need the open key ring: a locked member answers them as it
  answers everything else (UNAVAILABLE "member is locked ..."), a starting one with
  UNAVAILABLE "member is starting". They call `KeyStore.enable_autolock` /
  `disable_autolock` / `rotate_unlock_key` and return a new unlock key exactly once: it is
  stored nowhere, and the log records that the key changed, never the key.

Snapshot streams a consistent image of the state machine (`concordctl snapshot save`): once
the member is attached to its Raft loop (`Gateway.attach` hands the service the `Core`), it
takes a read barrier (the leader-only form redirects from a follower, as a write does), then
reads the image, its applied index and term and the applied configuration with no await in
between, so they describe one state; then it sends the image in chunks and its SHA-256. The
image goes out in the clear over the connection (mutual TLS in production): the CLI encrypts
it under a backup key the member never sees.

Everything runs on the member's event loop, which also owns the key store (the WAL uses it
from the same thread), so no call here races a WAL write. Who may call this: whoever the
client port admits, i.e. a holder of a certificate from the cluster CA (mutual TLS), or
anyone in `--insecure` mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.storage import (
    InvalidUnlockKeyError,
    KeyStore,
    KeyStoreError,
    StorageError,
    WrongUnlockKeyError,
    parse_unlock_key,
)

from ._core import Core
from ._errors import LOCKED_METADATA_KEY, Code, ServiceError, invalid, unavailable
from ._rpc import Call, Servicer, streaming, unary

log = logging.getLogger("concord.server")

LOCKED = "locked"
STARTING = "starting"
SNAPSHOT_CHUNK_BYTES = 1 << 20
"""Image bytes per SnapshotChunk (well inside the 4 MiB message limit)."""


class MemberKeys(Protocol):
    """What the service needs from its member process (`coordinator.daemon.member.Member`
    provides it; an in-process test server has none)."""

    @property
    def member_id(self) -> int: ...

    @property
    def member_name(self) -> str: ...

    @property
    def phase(self) -> str:
        """starting -> (locked ->) running -> stopping."""
        ...

    @property
    def keys(self) -> KeyStore | None:
        """The open key ring; None until the data directory is open (starting, locked)."""
        ...

    def unlock(self, unlock_key: str) -> bool:
        """Open the key ring with `unlock_key` and let the member go on starting. False if
        the member is not locked (any more); WrongUnlockKeyError if the key does not open
        the ring (the member stays locked)."""
        ...


def locked_error(member: int) -> ServiceError:
    return unavailable(
        f"member is locked: run concordctl unlock (member {member} has autolock on and is "
        "waiting for its unlock key; until it gets it, it answers only `concordctl unlock` and "
        "`concordctl cluster autolock status`)",
        ((LOCKED_METADATA_KEY, str(member)),),
    )


def phase_error(member: int, phase: str) -> ServiceError:
    """The UNAVAILABLE a member answers with while it cannot serve the API."""
    if phase == LOCKED:
        return locked_error(member)
    if phase == STARTING:
        return unavailable(
            f"member {member} is starting (opening its data directory); retry in a moment"
        )
    return unavailable(f"member {member} is {phase}; send this request to another member")


class MaintenanceService(Servicer):
    def __init__(self, member: MemberKeys | None, deadline_s: float) -> None:
        super().__init__(deadline_s)
        self.member = member
        self.core: Core | None = None
        """Set by `Gateway.attach` once the Raft loop runs (Snapshot needs it)."""

    def _member(self) -> MemberKeys:
        if self.member is None:
            raise ServiceError(
                Code.UNIMPLEMENTED,
                "this server runs without a member process, so it has no key store to manage "
                "(an in-process test server); call a `concord-coordinator` member",
            )
        return self.member

    def _keys(self, member: MemberKeys) -> KeyStore:
        keys = member.keys
        if keys is None:
            raise phase_error(member.member_id, member.phase)
        return keys

    @unary
    async def Unlock(self, request: pb.UnlockMemberRequest, call: Call) -> pb.UnlockMemberResponse:
        member = self._member()
        me = member.member_id
        if not request.unlock_key.strip():
            raise invalid(
                "unlock_key is empty: give the member's unlock key (CONCORD-UNLOCK-...), or "
                "combine its shares first (concordctl unlock --share ... --share ...)"
            )
        try:
            parse_unlock_key(request.unlock_key)
        except InvalidUnlockKeyError as err:
            raise invalid(f"{err}; nothing was tried") from None
        if member.phase != LOCKED:
            raise _not_locked(me, member.phase)
        try:
            unlocked = member.unlock(request.unlock_key)
        except WrongUnlockKeyError:
            log.warning("unlock refused: a wrong unlock key was offered through the client API")
            raise ServiceError(
                Code.PERMISSION_DENIED,
                f"wrong unlock key: it does not open member {me}'s key ring. Every member has "
                "its own unlock key, and a key from before a rotation no longer works; the "
                "member stays locked",
            ) from None
        except StorageError as err:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"member {me} cannot open its key ring: {err}; the member stays locked",
            ) from None
        if not unlocked:
            raise _not_locked(me, member.phase)
        log.info("unlocked through the client API (concordctl unlock)")
        return pb.UnlockMemberResponse(member_id=me)

    @unary
    async def AutolockStatus(
        self, request: pb.AutolockStatusRequest, call: Call
    ) -> pb.AutolockStatusResponse:
        member = self._member()
        keys = member.keys
        locked = member.phase == LOCKED
        return pb.AutolockStatusResponse(
            member_id=member.member_id,
            member_name=member.member_name,
            phase=member.phase,
            locked=locked,
            autolock=locked or (keys is not None and keys.autolock),
        )

    @unary
    async def SetAutolock(
        self, request: pb.SetAutolockRequest, call: Call
    ) -> pb.SetAutolockResponse:
        member = self._member()
        keys = self._keys(member)
        me = member.member_id
        if keys.autolock == request.enabled:
            return pb.SetAutolockResponse(member_id=me, autolock=keys.autolock, changed=False)
        try:
            if request.enabled:
                unlock_key = keys.enable_autolock()
            else:
                keys.disable_autolock()
                unlock_key = ""
        except (StorageError, OSError) as err:
            raise _key_write_failed(me, err) from None
        log.warning(
            "autolock turned %s through the client API%s",
            "ON" if request.enabled else "OFF",
            ": a restarted member now waits for its unlock key" if request.enabled else "",
        )
        return pb.SetAutolockResponse(
            member_id=me, autolock=request.enabled, changed=True, unlock_key=unlock_key
        )

    @unary
    async def RotateUnlockKey(
        self, request: pb.RotateUnlockKeyRequest, call: Call
    ) -> pb.RotateUnlockKeyResponse:
        member = self._member()
        keys = self._keys(member)
        me = member.member_id
        if not keys.autolock:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"autolock is off on member {me}: there is no unlock key to rotate; turn it on "
                "with `concordctl cluster autolock on`",
            )
        try:
            unlock_key = keys.rotate_unlock_key()
        except KeyStoreError as err:
            raise ServiceError(Code.FAILED_PRECONDITION, f"member {me}: {err}") from None
        except (StorageError, OSError) as err:
            raise _key_write_failed(me, err) from None
        log.warning("the unlock key was rotated through the client API; the old one is void")
        return pb.RotateUnlockKeyResponse(member_id=me, unlock_key=unlock_key)

    @unary
    async def RotateDataKey(
        self, request: pb.RotateDataKeyRequest, call: Call
    ) -> pb.RotateDataKeyResponse:
        core = self.core
        if core is None:
            if self.member is not None:
                raise phase_error(self.member.member_id, self.member.phase)
            raise unavailable("the server is starting: retry in a moment")
        try:
            async with asyncio.timeout(call.bound_s()):
                done = await core.loop.rotate_data_key()
        except TimeoutError:
            raise ServiceError(
                Code.DEADLINE_EXCEEDED,
                f"member {core.id} did not finish rotating its data key in time: either it had "
                "not switched yet (then nothing changed), or it switched (its log says 'data "
                "key rotated') but has not applied what it logged before (no quorum?), and "
                "its older key goes with the snapshot it takes once it has",
            ) from None
        return pb.RotateDataKeyResponse(
            member_id=core.id,
            key_id=done.key_id,
            snapshot_index=done.snapshot_index,
            retired_key_ids=list(done.retired),
        )

    @streaming
    async def Snapshot(
        self, request: pb.SnapshotRequest, call: Call
    ) -> AsyncIterator[pb.SnapshotChunk]:
        core = self.core
        if core is None:
            if self.member is not None:
                raise phase_error(self.member.member_id, self.member.phase)
            raise unavailable("the server is starting: retry in a moment")
        async with asyncio.timeout(call.bound_s()):
            if not request.any_member:
                await core.require_leader()
            elif not request.serializable:
                await core.read(False)
        # No await from here to the image: index, term, configuration and image are one state.
        fsm = core.fsm
        image = fsm.snapshot()
        conf = core.view.applied_conf
        info = pb.SnapshotInfo(
            member_id=core.id,
            cluster_id=str(getattr(self.member, "cluster_id", "")),
            index=fsm.applied_index,
            term=fsm.applied_term,
            voters=sorted(conf.voters),
            learners=sorted(conf.learners),
            size_bytes=len(image),
            revision=fsm.revision,
        )
        log.info(
            "streaming a snapshot of the state machine at index %d (term %d, %d bytes)",
            info.index,
            info.term,
            len(image),
        )
        yield pb.SnapshotChunk(info=info)
        for offset in range(0, len(image), SNAPSHOT_CHUNK_BYTES):
            yield pb.SnapshotChunk(data=image[offset : offset + SNAPSHOT_CHUNK_BYTES])
        yield pb.SnapshotChunk(sha256=hashlib.sha256(image).digest())


def _not_locked(member: int, phase: str) -> ServiceError:
    return ServiceError(
        Code.FAILED_PRECONDITION,
        f"member {member} is not locked (it is {phase}): there is nothing to unlock",
    )


def _key_write_failed(member: int, err: Exception) -> ServiceError:
    return ServiceError(
        Code.INTERNAL,
        f"member {member} could not rewrite its key files: {err}. Key files are replaced "
        "atomically, so the old state is intact unless the member says otherwise; check with "
        "`concordctl cluster autolock status` and the member's log",
    )
