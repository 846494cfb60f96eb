"""A partitioned old leader that still believes it leads must not answer a linearizable read
from its own, stale state: the read barrier (ReadIndex) needs a quorum's heartbeat answers,
which a minority cannot get. Serializable reads are local by contract and may be stale.

"Still believes it leads" is made certain, not left to a race against its check-quorum
timer: the old leader's clock is paused when it is cut off (a stalled process, a VM pause,
a clock that lags: its timers have not fired yet), so it never ticks its way to stepping
down while the majority elects a new leader and commits a write."""

from __future__ import annotations

from pathlib import Path

import grpc

from coordinator.api.v1 import concord_pb2 as pb
from coordinator.runtime.clock import Clock, SystemClock
from tests.server.harness import Cluster, Session, leader_among, rpc_error, run, wait_for


class PausableClock:
    """The system clock, until `pause` stops it where it stands."""

    def __init__(self) -> None:
        self._inner = SystemClock()
        self._paused_at: float | None = None

    def pause(self) -> None:
        self._paused_at = self._inner.monotonic_s()

    def monotonic_s(self) -> float:
        return self._inner.monotonic_s() if self._paused_at is None else self._paused_at

    def wall_ms(self) -> int:
        return self._inner.wall_ms()


class PausableCluster(Cluster):
    clocks: dict[int, PausableClock]

    def clock_for(self, member: int) -> Clock:
        clock = PausableClock()
        self.clocks = {**getattr(self, "clocks", {}), member: clock}
        return clock


def test_a_partitioned_old_leader_never_serves_a_stale_linearizable_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        c = await PausableCluster.start(tmp_path)
        assert isinstance(c, PausableCluster)
        try:
            old = await c.leader()
            s = Session(91)
            await old.client.kv.Put(pb.PutRequest(session=s.next(), key=b"k", value=b"before"))
            await wait_for(lambda: all(m.loop.fsm.get(b"k") is not None for m in c.running()))

            c.clocks[old.id].pause()
            c.net.isolate(old.id)
            majority = [m for m in c.running() if m is not old]
            new = await leader_among(lambda: majority)
            await new.client.kv.Put(
                pb.PutRequest(session=s.next(), key=b"k", value=b"after"), timeout=5
            )
            assert old.loop.is_leader, "the old leader must still believe it leads"

            # Linearizable (the default): refused or timed out, never the stale value.
            for request in (pb.RangeRequest(key=b"k"), pb.RangeRequest(key=b"a", range_end=b"z")):
                err = await rpc_error(old.client.kv.Range(request, timeout=1.0))
                assert err.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ), err
            # Serializable: answered locally, and here it really is stale.
            got = await old.client.kv.Range(pb.RangeRequest(key=b"k", serializable=True), timeout=5)
            assert [kv.value for kv in got.kvs] == [b"before"]
            got = await new.client.kv.Range(pb.RangeRequest(key=b"k"), timeout=5)
            assert [kv.value for kv in got.kvs] == [b"after"]
            assert old.loop.is_leader  # all of the above happened while it believed so
        finally:
            c.net.heal()
            await c.close()

    run(scenario())
