"""`coordinator.client.SyncClient` (the async client on a private loop in a thread) against
the in-process cluster, and how the client treats locked members."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.client import (
    Client,
    Compare,
    ConcordError,
    LockBusy,
    Put,
    SyncClient,
)
from coordinator.storage import KeyStore
from tests.cli.threaded import ThreadedCluster, ThreadedMember, member_config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCluster]:
    c = ThreadedCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.shutdown()


def test_kv_sequences_and_errors(cluster: ThreadedCluster) -> None:
    with SyncClient(cluster.endpoints) as c:
        rev = c.put(b"s/k", b"v1")
        assert rev > 0
        assert c.cas(b"s/k", b"v1", b"v2") and not c.cas(b"s/k", b"v1", b"v3")
        kv = c.get(b"s/k")
        assert kv is not None and kv.value == b"v2"
        assert c.delete(b"s/k") == 1 and c.get(b"s/k") is None
        c.sequence_create("sync-seq")
        assert c.sequence_next("sync-seq", 3) == [1, 2, 3]
        with pytest.raises(ConcordError) as err:
            c.sequence_next("no-such-seq")
        assert err.value.code == "NOT_FOUND"
        lease = c.lease_grant(20_000)
        info = c.lease_time_to_live(lease)
        assert info.id == lease and 0 < info.remaining_ms <= 20_000
        c.lease_revoke(lease)
        assert c.status().leader in {m.id for m in cluster.cluster.running()}


ASYNC_ONLY = {"call", "call_endpoint", "session"}
"""Client's own machinery (stubs, sessions): nothing a blocking caller can use."""


def test_every_client_call_has_a_blocking_twin_with_the_same_parameters() -> None:
    public = {n for n in dir(Client) if not n.startswith("_")} - ASYNC_ONLY
    missing = sorted(n for n in public if not hasattr(SyncClient, n))
    assert not missing, f"SyncClient lacks {missing}"
    for name in sorted(public):
        want, got = getattr(Client, name), getattr(SyncClient, name)
        if isinstance(want, property):
            assert isinstance(got, property), name
            continue
        params = list(inspect.signature(want).parameters.items())
        mine = list(inspect.signature(got).parameters.items())
        assert [(n, p.kind, p.default) for n, p in params] == [
            (n, p.kind, p.default) for n, p in mine
        ], name


def test_transactions_lock_and_sequence_reads_and_busy_locks(cluster: ThreadedCluster) -> None:
    with SyncClient(cluster.endpoints) as c:
        c.put(b"st/k", b"v1")
        done = c.txn([Compare(b"st/k", "value", "=", b"v1")], [Put(b"st/k", b"v2")])
        assert done.succeeded
        kv = c.get(b"st/k")
        assert kv is not None and kv.value == b"v2"
        assert not c.txn([Compare(b"st/k", "value", "=", b"v1")], [Put(b"st/k", b"v3")]).succeeded
        c.sequence_create("st-seq", start=10, increment=5)
        assert c.sequence_next("st-seq") == [10]
        info = c.sequence_get("st-seq")
        assert (info.next, info.increment) == (15, 5)
        with c.lock("st-lock", ttl_ms=5000) as held:
            holders = c.lock_info("st-lock").holders
            assert [h.fencing_token for h in holders] == [held.fencing_token]
            with pytest.raises(LockBusy), c.lock("st-lock", wait=False):
                pass
        assert not c.lock_info("st-lock").holders
        assert c.keepalive_streams_opened >= 1


def test_lock_is_held_across_calls_from_threads(cluster: ThreadedCluster) -> None:
    with SyncClient(cluster.endpoints) as a, SyncClient(cluster.endpoints) as b:
        with a.lock("sync-lock", ttl_ms=3000) as held:
            assert a.check_fence("sync-lock", held.fencing_token)
            got: list[int] = []
            waiter = threading.Thread(target=lambda: got.append(_hold(b, "sync-lock")))
            waiter.start()
            waiter.join(0.3)  # b must still be waiting: a holds the lock
            assert waiter.is_alive() and not got
        waiter.join(20)
        assert got and got[0] > held.fencing_token
        assert not a.check_fence("sync-lock", held.fencing_token)


def _hold(client: SyncClient, name: str) -> int:
    with client.lock(name, ttl_ms=3000) as held:
        return held.fencing_token


def test_watch_iterates_and_stops(cluster: ThreadedCluster) -> None:
    with SyncClient(cluster.endpoints) as c:
        first = c.put(b"sw/a", b"1")
        c.put(b"sw/b", b"2")
        seen = []
        for event in c.watch(b"sw/", b"sw0", start_revision=first):
            seen.append((event.kv.key, event.kv.value))
            if len(seen) == 2:
                break
        assert seen == [(b"sw/a", b"1"), (b"sw/b", b"2")]
        assert c.get(b"sw/a") is not None  # the client still works after the watch ended


def test_closed_client_refuses_and_close_is_idempotent(cluster: ThreadedCluster) -> None:
    c = SyncClient(cluster.endpoints)
    c.close()
    c.close()
    with pytest.raises(RuntimeError, match="closed"):
        c.get(b"k")


def test_locked_members_are_skipped_or_reported(cluster: ThreadedCluster, tmp_path: Path) -> None:
    KeyStore.create(tmp_path / "data", autolock=True)
    m = ThreadedMember(member_config(tmp_path / "data"))
    try:
        m.wait(lambda: m.phase == "locked", "the member to lock")
        with SyncClient([m.endpoint, *cluster.endpoints]) as c:
            assert c.put(b"past-the-locked-one", b"x") > 0  # the locked member is skipped
        with SyncClient([m.endpoint], timeout_s=30) as c:
            with pytest.raises(ConcordError) as err:
                c.get(b"k")  # at once, not after 30 s of retries
            assert err.value.locked and err.value.code == "UNAVAILABLE"
            assert "member is locked: run concordctl unlock" in err.value.message
            with pytest.raises(ConcordError) as err:
                next(c.watch(b"k"))
            assert err.value.locked
            # A stream call refused at once: its status, never grpc's own error.
            with pytest.raises(ConcordError) as err:
                c.lease_keepalive_once(1)
            assert err.value.locked and err.value.code == "UNAVAILABLE"
            status = c.autolock_status(m.endpoint)
            assert status.locked and status.phase == "locked"
    finally:
        assert m.stop() == 0
