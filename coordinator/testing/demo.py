"""Three members of the real Raft core and the real state machine in one process, driven by
the simulator: `python -m coordinator.testing.demo`.

An election, a lock taken under a lease (and refused to a second holder), a sequence, a
compare-and-swap, then the leader crashes, another is elected, and nothing acknowledged is
lost. Everything runs on virtual time over a simulated network, so the transcript is the same
on every run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace

from coordinator.fsm import (
    AcquireResult,
    Compare,
    CompareOp,
    CompareTarget,
    LeaseGrant,
    LeaseResult,
    LockAcquire,
    LockRelease,
    Put,
    SequenceBlock,
    SequenceCreate,
    SequenceNext,
    Txn,
    TxnResult,
)
from coordinator.raft import RawNode

from .sim import Simulator
from .sim_clients import Read, Request
from .sim_member import ClientReply, SimNode
from .sim_options import MS, SimOptions

DEMO_CLIENT = 1


class DemoCluster(Simulator):
    def __init__(self, seed: int) -> None:
        base = SimOptions.from_seed(seed, 3)
        opts = replace(
            base,
            faults=(),
            clients=0,
            drop_p=0.0,
            dup_p=0.0,
            long_delay_p=0.0,
            delay_min_us=1 * MS,
            delay_max_us=3 * MS,
            heartbeat_ticks=5,
            snapshot_every=1_000_000,
        )
        super().__init__(opts)
        self.replies: dict[int, ClientReply] = {}
        self.seq = 0

    def on_new_leader(self, node: SimNode, raw: RawNode) -> None:
        super().on_new_leader(node, raw)
        print(f"  t={self.now / MS:7.1f} ms  node {node.id} elected leader of term {raw.term}")

    def on_reply(self, rep: ClientReply) -> None:
        self.replies[rep.seq] = rep

    def run_until(self, done: object, limit_us: int) -> bool:
        deadline = self.now + limit_us
        while self._queue and self.now < deadline:
            if callable(done) and done():
                return True
            t, _, fn, args = self._pop()
            self.now = t
            fn(*args)
        return callable(done) and bool(done())

    def call(self, inp: Request) -> object:
        """Send one command to the leader and wait (virtual time) for its answer."""
        self.seq += 1
        seq = self.seq
        for _ in range(50):
            self.run_until(lambda: self.leader() is not None, 5_000 * MS)
            leader = self.leader()
            if leader is None:
                raise RuntimeError("no leader elected")
            leader.on_request(DEMO_CLIENT, seq, inp)
            self.run_until(lambda: seq in self.replies, 1_000 * MS)
            rep = self.replies.pop(seq, None)
            if rep is not None and rep.kind == "ok":
                return rep.output
        raise RuntimeError(f"{inp} did not complete")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coordinator.testing.demo")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    print(
        "Concord demo: 3 members of the real Raft core in one process, simulated network "
        f"and virtual time (seed {args.seed})"
    )
    c = DemoCluster(args.seed)
    alice, bob = (c.call(LeaseGrant(10_000)) for _ in range(2))
    assert isinstance(alice, LeaseResult) and isinstance(bob, LeaseResult)
    got = c.call(LockAcquire("jobs", alice.id))
    assert isinstance(got, AcquireResult)
    print(f"  lock 'jobs': alice {'acquired, fencing token ' + str(got.token)}")
    got = c.call(LockAcquire("jobs", bob.id))
    assert isinstance(got, AcquireResult)
    print(f"  lock 'jobs': bob   {'acquired' if got.granted else 'queued (held by alice)'}")
    c.call(LockRelease("jobs", alice.id))
    got = c.call(LockAcquire("jobs", bob.id))
    assert isinstance(got, AcquireResult)
    print(f"  lock 'jobs': alice releases; bob holds it with token {got.token}")

    c.call(SequenceCreate("orders"))
    values = []
    for _ in range(3):
        block = c.call(SequenceNext("orders"))
        assert isinstance(block, SequenceBlock)
        values.append(str(block.first))
    print(f"  sequence 'orders': next -> {', '.join(values)}")

    c.call(Put(b"config", b"v1"))

    def cas(old: bytes, new: bytes) -> bool:
        guard = Compare(b"config", CompareTarget.VALUE, CompareOp.EQUAL, old)
        out = c.call(Txn((guard,), (Put(b"config", new),)))
        return isinstance(out, TxnResult) and out.succeeded

    a, b = cas(b"v1", b"v2"), cas(b"v1", b"v3")
    print(f"  cas 'config': v1->v2 {'ok' if a else 'refused'}; v1->v3 {'ok' if b else 'refused'}")

    leader = c.leader()
    assert leader is not None
    print(f"  t={c.now / MS:7.1f} ms  crashing leader node {leader.id}")
    crashed_at = c.now
    leader.crash("demo")
    c.run_until(lambda: c.leader() is not None, 5_000 * MS)
    print(f"  failover took {(c.now - crashed_at) / MS:.0f} ms of virtual time")
    block = c.call(SequenceNext("orders"))
    config = c.call(Read("config"))
    assert isinstance(block, SequenceBlock)
    print(
        f"  after failover: sequence 'orders' next -> {block.first}, config={config} "
        "(nothing acknowledged lost)"
    )
    c.restart(leader)
    c.run_until(lambda: False, 500 * MS)
    raw = leader.raw
    assert raw is not None
    print(
        f"  node {leader.id} restarted from its disk: {raw.role.value}, "
        f"following node {raw.leader}, applied index {leader.fsm.applied_index}"
    )
    print("done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
