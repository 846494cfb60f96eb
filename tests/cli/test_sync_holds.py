"""`SyncClient.lock()` and `.leadership()` against the in-process cluster: the held handle's
`lost` is a threading.Event set the moment the hold is lost, timeouts raise
`DeadlineExceeded`, and leaving the block keeps the body's own exception."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from coordinator.client import DeadlineExceeded, LockLost, NotFound, SyncClient
from tests.cli.threaded import ThreadedCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCluster]:
    c = ThreadedCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.shutdown()


def test_sync_lock_says_when_it_is_lost(cluster: ThreadedCluster) -> None:
    with SyncClient(cluster.endpoints) as a, SyncClient(cluster.endpoints) as other:
        with a.lock("sync-lost", ttl_ms=3000) as held:
            assert isinstance(held.lost, threading.Event) and not held.lost.is_set()
            held.check()
            assert held.wait_lost(0) is None and held.error is None
            other.lease_revoke(held.lease)
            err = held.wait_lost(10)
            assert err is not None and err.code == "NOT_FOUND"
            assert held.lost.is_set() and held.error is err
            with pytest.raises(LockLost):
                held.check()
        # Free again at once for somebody else.
        with other.lock("sync-lost", timeout_s=5) as again:
            assert again.fencing_token > held.fencing_token


def test_sync_lock_timeout_and_the_bodys_exception(cluster: ThreadedCluster) -> None:
    with SyncClient(cluster.endpoints) as a, SyncClient(cluster.endpoints) as b:
        with a.lock("sync-busy", ttl_ms=5000):
            with pytest.raises(DeadlineExceeded) as err, b.lock("sync-busy", timeout_s=0.3):
                raise AssertionError("granted while held")
            assert err.value.code == "DEADLINE_EXCEEDED"
        with pytest.raises(KeyError, match="the body's"), b.lock("sync-busy", timeout_s=5):
            raise KeyError("the body's")
        with a.lock("sync-busy", timeout_s=5):  # released on the way out of b's block
            pass


def test_sync_leadership(cluster: ThreadedCluster) -> None:
    with SyncClient(cluster.endpoints) as a, SyncClient(cluster.endpoints) as b:
        with a.leadership("sync-chief", b"a", ttl_ms=3000) as lead:
            current = b.leader("sync-chief")
            assert current is not None and current.value == b"a"
            assert current.fencing_token == lead.fencing_token
            with pytest.raises(DeadlineExceeded):
                b.campaign("sync-chief", b.lease_grant(10_000), b"b", timeout_s=0.3)
        assert b.leader("sync-chief") is None


def test_sync_keep_alive_renews_and_says_when_the_lease_is_lost(
    cluster: ThreadedCluster,
) -> None:
    with SyncClient(cluster.endpoints) as a, SyncClient(cluster.endpoints) as other:
        sent_at = time.monotonic()
        lease = a.lease_grant(1500)
        kept = a.keep_alive(lease, 1500, sent_at=sent_at)
        assert isinstance(kept.lost, threading.Event) and kept.wait_lost(0) is None
        # Alive well past its TTL: the background thread renews it.
        deadline = time.monotonic() + 10
        while kept.renewals < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kept.renewals >= 3 and not kept.lost.is_set()
        assert time.monotonic() - sent_at > 1.5
        assert other.lease_time_to_live(lease).remaining_ms > 0
        # Revoked elsewhere: the handle learns of it.
        other.lease_revoke(lease)
        assert kept.wait_lost(10) == "NOT_FOUND"
        assert kept.code == "NOT_FOUND" and kept.reason

        # Stopped: no more renewals, so the lease runs out by itself.
        second = a.lease_grant(1000)
        kept2 = a.keep_alive(second, 1000)
        kept2.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                other.lease_time_to_live(second)
            except NotFound:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("a lease no longer kept alive did not expire")
        assert not kept2.lost.is_set()  # stopping is not a loss
