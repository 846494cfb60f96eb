"""The asyncio client: finds the leader, retries safely, and offers locks as context managers.

Leader discovery. Any member answers reads; mutations need the leader. A member that is not
the leader answers UNAVAILABLE with trailing metadata `concord-leader` naming it; the client
switches to that endpoint (or, with no hint, tries the next one) and retries.

Exactly once. A mutation runs under a session: a random 64-bit client id and the next
sequence number of that id. A retry (after a timeout, a redirect, a lost leader) reuses the
SAME (client id, seq), so the state machine answers a duplicate from its session table
instead of running it twice: a retried sequence `next` never burns a block, a retried put
never overwrites a later one. The state machine keeps one answer per client id and expects
one request at a time per id, so a `Client` shared by many tasks keeps a pool of ids: each
call borrows an idle one (or makes a new one) for its whole life, retries included, and
returns it with its sequence advanced. The pool grows to the client's peak concurrency.

Errors. Every failure is a `ConcordError` of the status's own type (`_errors.py`:
`NotFound`, `InvalidArgument`, `Unavailable`, `DeadlineExceeded`...); no grpc type escapes.
Statuses a person must act on (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
OUT_OF_RANGE, PERMISSION_DENIED) are raised at once with the server's message; UNAVAILABLE,
DEADLINE_EXCEEDED and a transport's INTERNAL or CANCELLED (a reset stream) are retried until
`timeout_s` runs out, which ends in `DeadlineExceeded` naming that budget.

Deadlines. Each attempt against one member is bounded by `attempt_timeout_s` (much shorter
than `timeout_s`), and a stopped member is detected by keepalive pings, so a leader that
stops answering is left within about an election timeout (`_transport.py`). A wrong endpoint
(a metrics or peer port, TLS against plaintext or the reverse, nothing listening) is
recognised from the transport's error and reported with what to do, within
`connect_timeout_s`, instead of being retried for `timeout_s`.

Locked members. A member with autolock on that has not been given its unlock key answers
UNAVAILABLE with trailing metadata `concord-locked`: the client moves on to the next endpoint,
and gives up at once (UNAVAILABLE, "member is locked: run concordctl unlock") when every
endpoint it knows is locked, instead of retrying for `timeout_s`.

Per-member calls. Key management (`unlock_member`, `autolock_status`, `set_autolock`,
`rotate_unlock_key`) acts on one member's own key ring, so these calls go to the endpoint
named, are never redirected, and are retried there only while it is unreachable or starting.

Streams. `watch` is an async iterator that reconnects (to the next endpoint, if need be)
after a broken stream and resumes where it was, so a consumer sees every change once, in
order; it gives up after `timeout_s` without any member answering.

Where the code is. `Client` combines the groups of calls, each a module of its own built on
the machinery every call shares (`_calls.py`: channels, redirects, retries, sessions): keys
and transactions (`_kv.py`), watches (`_watch.py`), leases (`_leases.py`), locks
(`_locks.py`), elections (`_elections.py`), sequences (`_sequences.py`), membership and
per-member administration (`_cluster.py`) and sealed secrets (`_secrets.py`). Locks and
leaderships held for an `async with` block are `_holds.py`'s.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from ._cluster import ClusterCalls
from ._config import ca_credentials, credentials_from_tls_dir, settings_from_env
from ._elections import ElectionCalls
from ._holds import HeldLeadership, HeldLock, hold_leadership, hold_lock
from ._kv import KVCalls
from ._leases import LeaseCalls
from ._locks import LockCalls
from ._secrets import SecretCalls
from ._sequences import SequenceCalls
from ._watch import WatchCalls


class Client(
    KVCalls,
    WatchCalls,
    LeaseCalls,
    LockCalls,
    ElectionCalls,
    SequenceCalls,
    ClusterCalls,
    SecretCalls,
):
    """The asyncio client (see the module doc). Build it from endpoints and credentials, or
    with `from_tls_dir` / `from_env`; use it as an `async with` block, or `close()` it."""

    @classmethod
    def from_tls_dir(
        cls,
        endpoints: str | Sequence[str],
        tls_dir: str | os.PathLike[str],
        **options: Any,  # noqa: ANN401 (the constructor's keyword options)
    ) -> Client:
        """A client with mutual TLS from a directory holding ca.pem and client.pem +
        client-key.pem (or member.pem + member-key.pem), as `concordctl cluster init`
        writes it. InvalidArgument (a ValueError) names a missing file or bad endpoint."""
        return cls(endpoints, credentials=credentials_from_tls_dir(tls_dir), **options)

    @classmethod
    def with_token(
        cls,
        endpoints: str | Sequence[str],
        token_file: str | os.PathLike[str],
        ca_file: str | os.PathLike[str],
        **options: Any,  # noqa: ANN401 (the constructor's keyword options)
    ) -> Client:
        """A client of members' workload ports: TLS trusting the cluster CA in `ca_file`,
        no client certificate, and the pod's ServiceAccount token from `token_file` (audience
        concord) on every call. The members scope it to `k8s/<its namespace>/`."""
        return cls(endpoints, credentials=ca_credentials(ca_file), token_file=token_file, **options)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        **options: Any,  # noqa: ANN401 (the constructor's keyword options)
    ) -> Client:
        """A client of CONCORD_ENDPOINTS (comma-separated host:port, required) with the TLS
        directory CONCORD_TLS_DIR (unset: plaintext, for --insecure members)."""
        endpoints, credentials = settings_from_env(env)
        return cls(endpoints, credentials=credentials, **options)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- held for a block: built on leases, locks or elections and watches alike (`_holds.py`)

    @contextlib.asynccontextmanager
    async def lock(
        self,
        name: str,
        *,
        ttl_ms: int = 10_000,
        timeout_s: float | None = None,
        max_holders: int = 1,
        lock_delay_ms: int = 0,
        wait: bool = True,
    ) -> AsyncIterator[HeldLock]:
        """Hold `name` for the body of an `async with`, on a lease of its own kept alive in
        the background. The `HeldLock` yielded carries the fencing token and says at once
        when the lock is lost (`lost`, `wait_lost()`, `add_lost_callback()`, `check()`).
        `timeout_s` (seconds, None: forever) bounds the wait (`DeadlineExceeded`). The lease
        is revoked on exit (releasing the lock) however the body ends, without ever
        replacing its exception or result. `wait=False`: do not queue; `LockBusy` at once if
        the lock is taken. See `_holds.py`."""
        async with hold_lock(
            self,
            name,
            ttl_ms=ttl_ms,
            timeout_s=timeout_s,
            max_holders=max_holders,
            lock_delay_ms=lock_delay_ms,
            wait=wait,
        ) as held:
            yield held

    @contextlib.asynccontextmanager
    async def leadership(
        self,
        election: str,
        value: bytes,
        *,
        ttl_ms: int = 10_000,
        timeout_s: float | None = None,
    ) -> AsyncIterator[HeldLeadership]:
        """Lead `election` (publishing `value`) for the body of an `async with`, on a lease
        of its own kept alive in the background; the `HeldLeadership` says at once when the
        leadership is lost, as `lock()`'s handle does. `timeout_s` bounds the campaign
        (`DeadlineExceeded`). Resigns (revokes the lease) on exit, however the body ends."""
        async with hold_leadership(
            self, election, value, ttl_ms=ttl_ms, timeout_s=timeout_s
        ) as held:
            yield held
