"""Keeping leases alive (`coordinator/client/_keepalive.py` over the leader's lessor,
`coordinator/fsm/lessor.py`) against a real 3-member cluster (tests/server/harness.py) over
real gRPC: a thousand leases renewed on one stream with no log entry per renewal, a lease kept
through a leader change and through a cut-off leader, a deposed leader acknowledging nothing,
transient failures shorter than the TTL survived, and a client cut off for longer told at
once when its TTL ran out. Transient failures come from a real TCP proxy in front of each
member that resets every connection and refuses new ones while cut."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.client import Client, _keepalive
from tests.server import harness
from tests.server.harness import Cluster, Member, leader_among, wait_for, with_cluster


@pytest.fixture(autouse=True)
def calmer_elections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ticks of 50 ms (elections after 0.5-1 s) instead of the harness's 10 ms: a thousand
    leases granted at once on this one event loop would otherwise look like a dead leader on
    a busy machine, and these tests make their leader changes themselves."""
    monkeypatch.setattr(harness, "TICK_S", 0.05)


def endpoints(c: Cluster, first: Member | None = None) -> list[str]:
    members = c.running()
    if first is not None:
        members = [first, *(m for m in members if m is not first)]
    return [f"127.0.0.1:{m.served.port}" for m in members]


class Proxy:
    """A TCP forwarder to one member; `cut()` resets every connection and refuses new ones
    until `restore()`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut_off = False
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open -= {writer, up_writer}

    def cut(self) -> None:
        self.cut_off = True
        for w in list(self._open):
            w.transport.abort()  # a reset, as a dropped network or a dead peer gives

    def restore(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def proxies(c: Cluster) -> list[Proxy]:
    out = [Proxy(m.served.port) for m in c.running()]
    for p in out:
        await p.start()
    return out


async def lease(client: Client, ttl_ms: int) -> tuple[int, float]:
    """A lease and the loop time its grant was sent."""
    sent_at = asyncio.get_running_loop().time()
    return await client.lease_grant(ttl_ms), sent_at


def test_a_thousand_leases_are_renewed_over_one_stream_without_log_entries(
    tmp_path: Path,
) -> None:
    count, ttl_ms = 1_000, 3_000

    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        async with Client(endpoints(c, leader)) as client:
            granted = await asyncio.gather(*(lease(client, ttl_ms) for _ in range(count)))
            kept = [client.keep_alive(i, ttl_ms, sent_at=at) for i, at in granted]
            applied_before = leader.loop.fsm.applied_index
            await wait_for(lambda: all(k.renewals >= 3 for k in kept), 30)
            assert not any(k.lost.is_set() for k in kept)
            stats = leader.served.core.lease_stats
            said = (stats, client.keepalive_streams_opened, leader.loop.leader_changes)
            assert stats.streams == 1 and client.keepalive_streams_opened == 1, said
            assert stats.renewals >= 3 * count, said
            assert stats.barriers < stats.renewals / 10, said  # renewals share barriers
            # Renewals due together travel in one message, not one message each: a message
            # costs the member's event loop far more than a lease id does.
            assert stats.messages < stats.renewals / 10, said
            # No entry per renewal: the log grew by a handful of entries (expiry checks for
            # nothing due write nothing at all), not by thousands.
            assert leader.loop.fsm.applied_index - applied_before < 50
            loop = asyncio.get_running_loop()
            assert all(k.expires_at > loop.time() for k in kept)

    with_cluster(tmp_path, scenario)


def test_a_lease_is_kept_through_a_leader_change(tmp_path: Path) -> None:
    ttl_ms = 2_000

    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        async with Client(endpoints(c, leader)) as client:
            lease_id, sent_at = await lease(client, ttl_ms)
            kept = client.keep_alive(lease_id, ttl_ms, sent_at=sent_at)
            await wait_for(lambda: kept.renewals >= 2)
            await c.stop(leader.id)  # the stream's member goes away
            new = await c.leader()
            before = kept.renewals
            await wait_for(lambda: kept.renewals >= before + 2 * 3, 20)  # two TTLs on
            assert not kept.lost.is_set(), kept.reason
            assert lease_id in new.loop.fsm.leases()
            info = await client.lease_time_to_live(lease_id)
            assert 0 < info.remaining_ms <= ttl_ms
            assert new.served.core.lease_stats.renewals >= 6

    with_cluster(tmp_path, scenario)


def test_a_lease_is_kept_while_its_leader_is_cut_off(tmp_path: Path) -> None:
    """The leader the stream is on stops hearing its peers (as a paused leader would look to
    them): its renewals cannot be confirmed, the others elect a new leader, and the client
    moves there in time."""
    ttl_ms = 3_000

    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        async with Client(endpoints(c, leader)) as client:
            lease_id, sent_at = await lease(client, ttl_ms)
            kept = client.keep_alive(lease_id, ttl_ms, sent_at=sent_at)
            await wait_for(lambda: kept.renewals >= 2)
            c.net.isolate(leader.id)
            new = await leader_among(lambda: [m for m in c.running() if m is not leader])
            await wait_for(lambda: new.served.core.lease_stats.renewals >= 6, 20)
            assert not kept.lost.is_set(), kept.reason
            c.net.heal()
            before = kept.renewals
            await wait_for(lambda: kept.renewals >= before + 3)
            assert not kept.lost.is_set(), kept.reason

    with_cluster(tmp_path, scenario)


def test_a_deposed_leader_acknowledges_no_renewal(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        async with Client(endpoints(c, leader)) as client:
            lease_id = await client.lease_grant(10_000)
        stream = leader.client.lease.KeepAlive()
        await stream.write(pb.LeaseKeepAliveRequest(id=lease_id))
        first = await asyncio.wait_for(stream.read(), 5)
        assert first.ttl_ms == 10_000  # still the leader: acknowledged
        # Cut off, it cannot confirm its leadership: a renewal sent at once (while it still
        # believes it leads) and later ones are never acknowledged.
        c.net.isolate(leader.id)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            for _ in range(3):
                await stream.write(pb.LeaseKeepAliveRequest(id=lease_id))
                answer = await asyncio.wait_for(stream.read(), 10)
                raise AssertionError(f"acknowledged by a deposed leader: {answer}")
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        assert not leader.loop.is_leader
        assert leader.loop.lessor.serving_term == 0
        c.net.heal()

    with_cluster(tmp_path, scenario)


# A real outage of 1.5 s (every proxied connection cut) while the keep-alive schedule runs.
@pytest.mark.process
def test_transient_failures_shorter_than_the_ttl_keep_the_lease(tmp_path: Path) -> None:
    ttl_ms = 5_000

    async def scenario(c: Cluster) -> None:
        ps = await proxies(c)
        try:
            async with Client([f"127.0.0.1:{p.port}" for p in ps]) as client:
                lease_id, sent_at = await lease(client, ttl_ms)
                kept = client.keep_alive(lease_id, ttl_ms, sent_at=sent_at)
                await wait_for(lambda: kept.renewals >= 2)
                for p in ps:  # every connection reset, every reconnect refused
                    p.cut()
                await asyncio.sleep(1.5)
                for p in ps:
                    p.restore()
                before = kept.renewals
                await wait_for(lambda: kept.renewals >= before + 3, 20)
                assert not kept.lost.is_set(), kept.reason
                assert client.keepalive_streams_opened >= 2  # it did lose its stream
        finally:
            for p in ps:
                await p.close()

    with_cluster(tmp_path, scenario)


def test_a_client_cut_off_longer_than_the_ttl_is_told_promptly(tmp_path: Path) -> None:
    ttl_ms = 2_000

    async def scenario(c: Cluster) -> None:
        ps = await proxies(c)
        try:
            async with Client([f"127.0.0.1:{p.port}" for p in ps]) as client:
                lease_id, sent_at = await lease(client, ttl_ms)
                kept = client.keep_alive(lease_id, ttl_ms, sent_at=sent_at)
                told: list[tuple[str, str]] = []
                kept.add_callback(lambda code, reason: told.append((code, reason)))
                await wait_for(lambda: kept.renewals >= 2)
                loop = asyncio.get_running_loop()
                for p in ps:
                    p.cut()
                cut_at = loop.time()
                await asyncio.wait_for(kept.lost.wait(), 10)
                lost_at = loop.time()
                assert kept.code == "UNAVAILABLE" and "within its TTL" in kept.reason
                # Never before the TTL since the last acknowledged send ran out, and promptly
                # after (the event loop is shared with the cluster: a little slack).
                assert kept.expires_at <= lost_at < kept.expires_at + 0.5
                assert lost_at - cut_at <= ttl_ms / 1000 + 0.5
                await asyncio.sleep(0)
                assert told == [(kept.code, kept.reason)]
                # The cluster still holds the lease until it expires there, later.
                leader = await c.leader()
                assert lease_id in leader.loop.fsm.leases() or lost_at - cut_at >= 1.0
        finally:
            for p in ps:
                await p.close()

    with_cluster(tmp_path, scenario)


def test_a_lease_ended_by_the_cluster_is_lost_at_once(tmp_path: Path) -> None:
    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        async with Client(endpoints(c, leader)) as client, Client(endpoints(c)) as other:
            lease_id, sent_at = await lease(client, 3_000)
            kept = client.keep_alive(lease_id, 3_000, sent_at=sent_at)
            survivor_id, sent_at = await lease(client, 3_000)
            survivor = client.keep_alive(survivor_id, 3_000, sent_at=sent_at)
            await wait_for(lambda: kept.renewals >= 1)
            await other.lease_revoke(lease_id)
            await asyncio.wait_for(kept.lost.wait(), 5)
            assert kept.code == "NOT_FOUND"
            before = survivor.renewals
            await wait_for(lambda: survivor.renewals >= before + 2)  # the stream went on
            assert not survivor.lost.is_set() and client.keepalive_streams_opened == 1

    with_cluster(tmp_path, scenario)


def test_a_leader_suspect_to_the_clients_other_calls_still_gets_the_renewals(
    tmp_path: Path,
) -> None:
    """Under a burst of lock acquisitions the client's calls time out on the busy leader again
    and again, and each timeout makes it suspect to the client. The keeper follows a
    follower's redirect to it all the same (only its own give-up on a silent stream counts):
    otherwise every follower names the leader, the keeper goes on to the next follower, and
    the lease runs out of TTL while the leader would have answered."""
    ttl_ms = 3_000

    async def scenario(c: Cluster) -> None:
        leader, follower = await c.leader(), await c.follower()
        async with Client(endpoints(c, leader)) as granter:
            lease_id, sent_at = await lease(granter, ttl_ms)
        async with Client(endpoints(c, follower)) as client:
            loop = asyncio.get_running_loop()
            leader_endpoint = f"127.0.0.1:{leader.served.port}"
            # What the client's other calls timing out on the leader leave behind.
            client._suspect_until[leader_endpoint] = loop.time() + 3600
            kept = client.keep_alive(lease_id, ttl_ms, sent_at=sent_at)
            await wait_for(lambda: kept.renewals >= 3 or kept.lost.is_set(), 15)
            assert not kept.lost.is_set(), kept.reason
            assert leader.served.core.lease_stats.renewals >= 3
            assert client.keepalive_streams_opened <= 3

    with_cluster(tmp_path, scenario)


@pytest.mark.process  # the keeper's silence bound is real time on a real gRPC stream
def test_a_leader_that_answers_renewals_late_keeps_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader busy with a burst of lock acquisitions answered renewals a second or two late.
    The keeper gave up on its stream after one second of silence, every follower sent it back
    to that leader, it would not go (it had just given up there) and resent everything when it
    came back: leases ran out of TTL on a leader that would have renewed them. A stream is now
    given a renewal interval (TTL/3) to answer; here the leader answers each renewal 1.5 s
    late, later than the old bound and well within the TTL."""
    ttl_ms = 9_000

    async def scenario(c: Cluster) -> None:
        leader = await c.leader()
        core = leader.served.core
        confirm = core.confirm_leading

        async def late() -> None:
            await asyncio.sleep(1.5)
            await confirm()

        monkeypatch.setattr(core, "confirm_leading", late)
        async with Client(endpoints(c, leader)) as client:
            lease_id, sent_at = await lease(client, ttl_ms)
            kept = client.keep_alive(lease_id, ttl_ms, sent_at=sent_at)
            await wait_for(lambda: kept.renewals >= 3 or kept.lost.is_set(), 30)
            assert not kept.lost.is_set(), kept.reason
            assert client.keepalive_streams_opened == 1
            assert core.lease_stats.streams == 1

    with_cluster(tmp_path, scenario)


def test_the_back_off_starts_again_after_a_stream_that_was_answered() -> None:
    # Doubling up to the cap while streams fail unanswered; a stream that renewed and then
    # broke is retried after the shortest wait, not the longest the past left behind.
    delay = _keepalive._BACKOFF_MIN_S
    for _ in range(10):
        delay = _keepalive.backoff_after(delay, answered=False)
        delay = min(delay * 2, _keepalive._BACKOFF_MAX_S)
    assert delay == _keepalive._BACKOFF_MAX_S
    assert _keepalive.backoff_after(delay, answered=False) == _keepalive._BACKOFF_MAX_S
    assert _keepalive.backoff_after(delay, answered=True) == _keepalive._BACKOFF_MIN_S
