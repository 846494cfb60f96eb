"""`SyncClient`: the asyncio `Client` for synchronous code (scripts, tests, a REPL).

Mechanism. Each `SyncClient` owns a private event loop that runs forever in a daemon
thread; every method submits the matching `Client` coroutine to it
(`asyncio.run_coroutine_threadsafe`) and blocks until it finishes, so the leader discovery,
the retries and the exactly-once sessions are the async client's own. Background work keeps
running between calls in that thread: the keep-alive of a held `lock()`, for instance.

Held locks and leaderships. `lock()` and `leadership()` yield a `SyncHeld`: the async
handle's loss signals for a thread. Its `lost` is a `threading.Event`, set from the loop's
thread the moment the async handle learns of the loss (see `_holds.py`), so a worker thread
can poll it or `wait_lost(timeout_s)` on it; `check()` raises `LockLost`.

Why a thread and not `asyncio.run` per call: gRPC channels and lease keep-alives belong
to one event loop and must outlive a call. Why not the caller's loop: a synchronous caller
may have none, or may be inside one that it cannot block on.

Rules. Methods may be called from any thread (one call at a time per thread; calls from
several threads interleave safely on the loop). Call `close()` (or use `with`) to stop the
thread. Do not call it from a coroutine on some other event loop: it blocks that loop for
the duration of the call. Ctrl-C during a call cancels the call's coroutine and re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import grpc

from ._client import Client
from ._config import ca_credentials, credentials_from_tls_dir, settings_from_env
from ._holds import HeldLeadership, HeldLock, LockLost
from ._keepalive import KeptLease
from ._secrets import ReEncrypted, SealedCheck, SealingKeyInfo, SealingKeys, Unsealed
from ._types import (
    AutolockChange,
    AutolockStatus,
    Compare,
    DataKeyRotation,
    Event,
    JoinTokenInfo,
    KeyValue,
    Leadership,
    LeaseInfo,
    Lock,
    LockInfo,
    MemberList,
    NewJoinToken,
    SequenceInfo,
    Status,
    TxnOp,
    TxnResult,
    UnlockKeyRotation,
)

T = TypeVar("T")


class SyncHeld:
    """A held lock or leadership, for synchronous code (see the module docstring)."""

    def __init__(self, held: HeldLock | HeldLeadership) -> None:
        self.held = held
        """The async handle (use it only on the client's loop)."""
        self.name = held.name
        self.lease = held.lease
        self.fencing_token = held.fencing_token
        self.lost = threading.Event()
        """Set (from the client's loop thread) the moment the hold is lost."""
        self._error: LockLost | None = None

    def _on_lost(self, err: LockLost) -> None:
        self._error = err
        self.lost.set()

    @property
    def error(self) -> LockLost | None:
        """Why the hold was lost, or None while it is held."""
        return self._error if self.lost.is_set() else None

    def wait_lost(self, timeout_s: float | None = None) -> LockLost | None:
        """Block until the hold is lost (returns why) or `timeout` passes (returns None)."""
        return self._error if self.lost.wait(timeout_s) else None

    def check(self) -> None:
        """Raise `LockLost` if the hold is lost; call it before acting as the holder."""
        if self.lost.is_set() and self._error is not None:
            raise self._error


class SyncKeptLease:
    """A lease kept alive (`SyncClient.keep_alive`), for synchronous code: the async
    `KeptLease`'s loss as a `threading.Event`, set from the client's loop thread."""

    def __init__(self, kept: KeptLease, loop: asyncio.AbstractEventLoop) -> None:
        self.kept = kept
        """The async handle (use it only on the client's loop)."""
        self.lease = kept.lease
        self._loop = loop
        self.lost = threading.Event()
        """Set (from the client's loop thread) the moment the lease is lost."""
        self.code = ""
        """Why it was lost (as `KeptLease.code`); "" while kept."""
        self.reason = ""

    def _on_lost(self, code: str, reason: str) -> None:
        self.code, self.reason = code, reason
        self.lost.set()

    @property
    def renewals(self) -> int:
        """Renewals acknowledged so far (read across threads: a snapshot)."""
        return self.kept.renewals

    def wait_lost(self, timeout_s: float | None = None) -> str | None:
        """Block until the lease is lost (returns the code) or `timeout_s` passes (None)."""
        return self.code if self.lost.wait(timeout_s) else None

    def stop(self) -> None:
        """Stop renewing (ending the lease is the caller's business: `lease_revoke`)."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.kept.stop)

    def __repr__(self) -> str:
        return f"Sync{self.kept!r}"


class SyncClient:
    """The same operations as `Client`, blocking (see the module docstring)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token_file: str | os.PathLike[str] | None = None,
        timeout_s: float = 10.0,
        rpc_timeout_s: float = 3.0,
        attempt_timeout_s: float = 1.0,
        connect_timeout_s: float = 2.0,
        pipeline: bool = True,
    ) -> None:
        self._client = Client(
            endpoints,
            credentials=credentials,
            token_file=token_file,
            timeout_s=timeout_s,
            rpc_timeout_s=rpc_timeout_s,
            attempt_timeout_s=attempt_timeout_s,
            connect_timeout_s=connect_timeout_s,
            pipeline=pipeline,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="concord-sync-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    @classmethod
    def from_tls_dir(
        cls,
        endpoints: str | Sequence[str],
        tls_dir: str | os.PathLike[str],
        **options: Any,  # noqa: ANN401 (the constructor's keyword options)
    ) -> SyncClient:
        """As `Client.from_tls_dir`."""
        return cls(endpoints, credentials=credentials_from_tls_dir(tls_dir), **options)

    @classmethod
    def with_token(
        cls,
        endpoints: str | Sequence[str],
        token_file: str | os.PathLike[str],
        ca_file: str | os.PathLike[str],
        **options: Any,  # noqa: ANN401 (the constructor's keyword options)
    ) -> SyncClient:
        """As `Client.with_token`: a pod's client of members' workload ports (TLS trusting
        `ca_file`, the ServiceAccount token in `token_file` on every call)."""
        return cls(endpoints, credentials=ca_credentials(ca_file), token_file=token_file, **options)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        **options: Any,  # noqa: ANN401 (the constructor's keyword options)
    ) -> SyncClient:
        """As `Client.from_env` (CONCORD_ENDPOINTS, CONCORD_TLS_DIR)."""
        endpoints, credentials = settings_from_env(env)
        return cls(endpoints, credentials=credentials, **options)

    @property
    def client(self) -> Client:
        """The async client underneath (use it only on this client's loop)."""
        return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this SyncClient is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        """Close the channels and stop the loop's thread (idempotent)."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self._run(self._client.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- KV ------------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return self._run(self._client.put(key, value, lease))

    def get(self, key: bytes, *, serializable: bool = False) -> KeyValue | None:
        return self._run(self._client.get(key, serializable=serializable))

    def get_range(
        self, key: bytes, range_end: bytes = b"", *, limit: int = 0, serializable: bool = False
    ) -> list[KeyValue]:
        return self._run(
            self._client.get_range(key, range_end, limit=limit, serializable=serializable)
        )

    def get_prefix(
        self, prefix: bytes, *, limit: int = 0, serializable: bool = False
    ) -> list[KeyValue]:
        return self._run(self._client.get_prefix(prefix, limit=limit, serializable=serializable))

    def get_many(
        self, keys: Sequence[bytes], *, serializable: bool = False
    ) -> list[KeyValue | None]:
        return self._run(self._client.get_many(keys, serializable=serializable))

    def delete(self, key: bytes, range_end: bytes = b"") -> int:
        return self._run(self._client.delete(key, range_end))

    def cas(self, key: bytes, expected: bytes | None, new: bytes) -> bool:
        return self._run(self._client.cas(key, expected, new))

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        return self._run(self._client.txn(compares, success, failure))

    def watch(
        self, key: bytes, range_end: bytes = b"", *, start_revision: int = 0
    ) -> Iterator[Event]:
        """The events of `Client.watch`, one at a time; stop iterating to end the watch."""
        stream = self._client.watch(key, range_end, start_revision=start_revision)
        try:
            while True:
                try:
                    yield self._run(_anext(stream))
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(stream.aclose())

    # --- leases and locks ----------------------------------------------------------------------

    def lease_grant(self, ttl_ms: int) -> int:
        return self._run(self._client.lease_grant(ttl_ms))

    def lease_revoke(self, lease: int) -> None:
        self._run(self._client.lease_revoke(lease))

    def lease_time_to_live(self, lease: int) -> LeaseInfo:
        return self._run(self._client.lease_time_to_live(lease))

    def lease_keepalive_once(self, lease: int) -> int:
        return self._run(self._client.lease_keepalive_once(lease))

    def keep_alive(self, lease: int, ttl_ms: int, *, sent_at: float | None = None) -> SyncKeptLease:
        """Keep `lease` alive in the background thread, on the client's one keep-alive
        stream, until the handle's `stop()` or the lease's loss (its `lost` is set). As
        `Client.keep_alive`; `sent_at` is a `time.monotonic()` reading (the loop's clock)
        taken before the grant was sent (default: now)."""

        async def keep() -> SyncKeptLease:
            kept = self._client.keep_alive(lease, ttl_ms, sent_at=sent_at)
            sync = SyncKeptLease(kept, self._loop)
            kept.add_callback(sync._on_lost)  # registered on the loop, as it must be
            return sync

        return self._run(keep())

    def acquire(
        self,
        name: str,
        lease: int,
        *,
        max_holders: int = 1,
        lock_delay_ms: int = 0,
        timeout_s: float | None = None,
    ) -> Lock:
        return self._run(
            self._client.acquire(
                name,
                lease,
                max_holders=max_holders,
                lock_delay_ms=lock_delay_ms,
                timeout_s=timeout_s,
            )
        )

    def release(self, lock: Lock) -> None:
        self._run(self._client.release(lock))

    def check_fence(self, name: str, token: int) -> bool:
        return self._run(self._client.check_fence(name, token))

    def lock_info(self, name: str, *, serializable: bool = False) -> LockInfo:
        return self._run(self._client.lock_info(name, serializable=serializable))

    @property
    def keepalive_streams_opened(self) -> int:
        """As `Client.keepalive_streams_opened` (read across threads: a snapshot)."""
        return self._client.keepalive_streams_opened

    @contextlib.contextmanager
    def lock(
        self,
        name: str,
        *,
        ttl_ms: int = 10_000,
        timeout_s: float | None = None,
        max_holders: int = 1,
        lock_delay_ms: int = 0,
        wait: bool = True,
    ) -> Iterator[SyncHeld]:
        """Hold `name` for the body of a `with` (the lease is kept alive in the background
        thread meanwhile); released, and the lease revoked, on exit. As `Client.lock`
        (`wait=False`: `LockBusy` at once if it is held)."""
        manager = self._client.lock(
            name,
            ttl_ms=ttl_ms,
            timeout_s=timeout_s,
            max_holders=max_holders,
            lock_delay_ms=lock_delay_ms,
            wait=wait,
        )
        yield from self._hold(manager)

    def _hold(
        self,
        manager: AbstractAsyncContextManager[HeldLock]
        | AbstractAsyncContextManager[HeldLeadership],
    ) -> Iterator[SyncHeld]:
        async def enter() -> SyncHeld:
            held = await manager.__aenter__()
            sync = SyncHeld(held)
            held.add_lost_callback(sync._on_lost)  # registered on the loop, as it must be
            return sync

        sync = self._run(enter())
        try:
            yield sync
        except BaseException as exc:
            if not self._run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._run(manager.__aexit__(None, None, None))

    # --- sequences -----------------------------------------------------------------------------

    def sequence_create(self, name: str, start: int = 1, increment: int = 1) -> None:
        self._run(self._client.sequence_create(name, start, increment))

    def sequence_next(self, name: str, count: int = 1) -> list[int]:
        return self._run(self._client.sequence_next(name, count))

    def sequence_get(self, name: str, *, serializable: bool = False) -> SequenceInfo:
        return self._run(self._client.sequence_get(name, serializable=serializable))

    # --- elections -----------------------------------------------------------------------------

    def campaign(
        self, election: str, lease: int, value: bytes, *, timeout_s: float | None = None
    ) -> Leadership:
        return self._run(self._client.campaign(election, lease, value, timeout_s=timeout_s))

    @contextlib.contextmanager
    def leadership(
        self, election: str, value: bytes, *, ttl_ms: int = 10_000, timeout_s: float | None = None
    ) -> Iterator[SyncHeld]:
        """Lead `election` for the body of a `with`; resigns on exit. As
        `Client.leadership`."""
        manager = self._client.leadership(election, value, ttl_ms=ttl_ms, timeout_s=timeout_s)
        yield from self._hold(manager)

    def proclaim(self, leadership: Leadership, value: bytes) -> Leadership:
        return self._run(self._client.proclaim(leadership, value))

    def resign(self, leadership: Leadership) -> None:
        self._run(self._client.resign(leadership))

    def leader(self, election: str, *, serializable: bool = False) -> Leadership | None:
        return self._run(self._client.leader(election, serializable=serializable))

    # --- cluster -------------------------------------------------------------------------------

    def members(self, *, serializable: bool = False) -> MemberList:
        return self._run(self._client.members(serializable=serializable))

    def status(self) -> Status:
        return self._run(self._client.status())

    def member_add_learner(
        self, member: int, name: str, peer_url: str, client_url: str, *, readmit: bool = False
    ) -> None:
        self._run(
            self._client.member_add_learner(member, name, peer_url, client_url, readmit=readmit)
        )

    def member_promote(self, member: int) -> None:
        self._run(self._client.member_promote(member))

    def member_remove(self, member: int) -> None:
        self._run(self._client.member_remove(member))

    def transfer_leader(self, member: int) -> None:
        self._run(self._client.transfer_leader(member))

    def join_token_create(self) -> NewJoinToken:
        return self._run(self._client.join_token_create())

    def join_token_list(self) -> list[JoinTokenInfo]:
        return self._run(self._client.join_token_list())

    def join_token_revoke(self, token_or_id: str) -> JoinTokenInfo:
        return self._run(self._client.join_token_revoke(token_or_id))

    # --- sealed secrets ------------------------------------------------------------------------

    def sealing_certificate(self) -> SealingKeys:
        return self._run(self._client.sealing_certificate())

    def renew_sealing_key(self) -> SealingKeyInfo:
        return self._run(self._client.renew_sealing_key())

    def unseal(self, ciphertext: bytes, namespace: str, name: str) -> Unsealed:
        return self._run(self._client.unseal(ciphertext, namespace, name))

    def re_encrypt(self, ciphertext: bytes, namespace: str, name: str) -> ReEncrypted:
        return self._run(self._client.re_encrypt(ciphertext, namespace, name))

    def validate_sealed(self, values: Sequence[tuple[bytes, str, str]]) -> list[SealedCheck]:
        return self._run(self._client.validate_sealed(values))

    # --- one member's keys ---------------------------------------------------------------------

    def unlock_member(self, endpoint: str, unlock_key: str) -> int:
        return self._run(self._client.unlock_member(endpoint, unlock_key))

    def autolock_status(self, endpoint: str) -> AutolockStatus:
        return self._run(self._client.autolock_status(endpoint))

    def set_autolock(self, endpoint: str, enabled: bool) -> AutolockChange:
        return self._run(self._client.set_autolock(endpoint, enabled))

    def rotate_unlock_key(self, endpoint: str) -> UnlockKeyRotation:
        return self._run(self._client.rotate_unlock_key(endpoint))

    def rotate_data_key(self, endpoint: str) -> DataKeyRotation:
        return self._run(self._client.rotate_data_key(endpoint))


async def _anext(stream: AsyncGenerator[Event, None]) -> Event:
    return await anext(stream)
