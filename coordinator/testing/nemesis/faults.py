"""The nemesis: real faults dealt to real member processes.

Each fault has an `apply`, a `heal` (the undoing: a restart, SIGCONT, links restored) and a
`settle` (bounded waits until the members it touched serve again). An episode heals all its
faults before any settles, so that one fault's recovery never waits on another still in force.

- kill-leader, kill-follower: SIGKILL; healed by a restart from the data dir.
- pause-leader, pause-follower: SIGSTOP; healed by SIGCONT, after which we note how long the
  woken member still claimed to lead.
- partition-majority: a minority (with or without the leader) cut off, both ways.
- partition-leader: the leader cut off from everyone, both ways.
- partition-one-way: one member's outgoing (or incoming) links only.
- partition-bridge: two halves that only one member hears and is heard by.
  (Partitions are healed by restoring every link.)
- torn-wal: SIGKILL, then a half-written record appended to the newest segment; restart.
- truncated-wal: SIGSTOP the member at a moment its WAL ends in commit-only hard-state
  records (those the WAL writes without fsync; it looks with `rafttool.dump`, up to 20
  tries), SIGKILL it, and cut the newest segment inside that run, as a power cut may; restart.
- remove-readd: remove a member (leadership moved off it first), kill it, wipe its data;
  healed by adding a new member in its place (a new id: removed ids are never reused) as a
  learner and promoting it once caught up.
- disk-full: RLIMIT_FSIZE on the running member at its newest segment's size, so its next
  WAL write fails with EFBIG; healed by a restart (which lifts the limit).

Both WAL faults stay inside Raft's fault model: they lose only what was never fsynced, so never
anything the member acknowledged. Cutting a record that *was* fsynced (an entry, a vote) is a
disk that lied; Raft does not promise to survive it, and a member that finds its log shorter
than the commit index its leader sends stops with "commit N beyond last index M (log lost
entries?)", as etcd's raft panics (docs/consensus.md).

Every apply and heal is written to the scenario's timeline (`Event`), with the member ids
and what was observed (e.g. how long a woken leader kept claiming the role, whether the member
with the full disk exited and what it said).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import subprocess
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from coordinator.client import ConcordError
from coordinator.storage import WalCorruptError, dump, log_position, record_frames

from .cluster import Cluster, ClusterError
from .history import Clock
from .workloads import until_ok

KINDS = (
    "kill-leader",
    "kill-follower",
    "pause-leader",
    "pause-follower",
    "partition-majority",
    "partition-leader",
    "partition-one-way",
    "partition-bridge",
    "torn-wal",
    "truncated-wal",
    "remove-readd",
    "disk-full",
)
COMBINABLE = frozenset(KINDS[:10])
"""Kinds that may be active together (see `scenarios.random_schedule`)."""

FRAME = struct.Struct(">II")
"""A WAL record frame's head, u32 length | u32 CRC (coordinator/storage/_segment.py): to
forge the head of a torn write. Reading frames is `coordinator.storage.record_frames`."""
RECOVER_S = 30.0
"""Bound on every wait for the cluster to recover after a heal."""
FREEZE_ATTEMPTS = 20
"""truncated-wal: how many times to SIGSTOP a member and look at its WAL's tail."""
EXIT_AFTER_WAL_FAILURE_S = 15.0
"""How long a member whose WAL failed may take to stop (its shutdown waits up to ~8 s for
client calls, peer streams and the loop)."""


@dataclass
class Event:
    at_us: int
    fault: str
    phase: str
    """apply | heal | note."""
    members: list[int]
    detail: dict[str, object] = field(default_factory=dict)


class Fault:
    """One fault (see the module docstring). Subclasses fill in `apply` and `heal`."""

    kind = ""

    def __init__(self, kind: str, rng: random.Random) -> None:
        self.kind = kind
        self.rng = rng
        self.targets: list[int] = []
        self.detail: dict[str, object] = {}
        self.problems: list[str] = []
        """Findings the fault itself observed (reported with the run's problems)."""

    async def apply(self, cluster: Cluster) -> None:
        raise NotImplementedError

    async def heal(self, cluster: Cluster) -> None:
        """Undo the fault (restart, SIGCONT, restore links): the actions only."""
        raise NotImplementedError

    async def settle(self, cluster: Cluster) -> None:
        """Wait (bounded) until the members this fault touched serve again, and note what
        was observed. Runs after every fault of the episode is healed, so that one fault's
        recovery never waits on another fault still in force."""
        await cluster.wait_ready(self.targets, RECOVER_S)


def make_fault(kind: str, rng: random.Random) -> Fault:
    match kind:
        case "kill-leader" | "kill-follower":
            return Kill(kind, rng)
        case "pause-leader" | "pause-follower":
            return Pause(kind, rng)
        case "partition-majority" | "partition-leader" | "partition-one-way" | "partition-bridge":
            return Partition(kind, rng)
        case "torn-wal" | "truncated-wal":
            return TornWal(kind, rng)
        case "remove-readd":
            return RemoveReadd(kind, rng)
        case "disk-full":
            return DiskFull(kind, rng)
    raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")


async def leader_or_any(cluster: Cluster, rng: random.Random, timeout_s: float = 10.0) -> int:
    """The current leader; if none emerges in time, a random running voter (or 0)."""
    try:
        return await cluster.leader(timeout_s)
    except ClusterError:
        live = sorted(m.id for m in cluster.running() if m.id in cluster.voters)
        return rng.choice(live) if live else 0


async def pick(cluster: Cluster, rng: random.Random, leader: bool) -> int:
    """The leader, or a random running voter that is not the leader."""
    current = await leader_or_any(cluster, rng)
    if leader:
        return current
    others = sorted(m.id for m in cluster.running() if m.id in cluster.voters and m.id != current)
    return rng.choice(others) if others else current


class Kill(Fault):
    async def apply(self, cluster: Cluster) -> None:
        target = await pick(cluster, self.rng, self.kind == "kill-leader")
        self.targets = [target]
        cluster.kill(target)

    async def heal(self, cluster: Cluster) -> None:
        for t in self.targets:
            if not cluster.members[t].running():
                cluster.start(t)


class Pause(Fault):
    woke = 0.0
    """Event-loop time of the SIGCONT."""

    async def apply(self, cluster: Cluster) -> None:
        target = await pick(cluster, self.rng, self.kind == "pause-leader")
        self.targets = [target]
        st = await cluster.status(target)
        self.detail["was_leader"] = bool(st and st.leader_role)
        self.detail["term_before"] = st.term if st else 0
        cluster.pause(target)

    async def heal(self, cluster: Cluster) -> None:
        for t in self.targets:
            cluster.resume(t)
        self.woke = asyncio.get_running_loop().time()

    async def settle(self, cluster: Cluster) -> None:
        target = self.targets[0]
        # A woken leader may believe it leads until it hears the new term; it must not act
        # on it (the histories check that). Note how long it kept claiming the role.
        loop = asyncio.get_running_loop()
        woke = self.woke
        claimed_until = woke
        while loop.time() - woke < RECOVER_S:
            st = await cluster.status(target)
            if st is not None and not st.leader_role:
                break
            leader = await cluster.current_leader()
            if leader == target:
                break  # it leads again, legitimately (re-elected, or nobody replaced it)
            claimed_until = loop.time()
            await asyncio.sleep(0.02)
        self.detail["stale_leader_claim_s"] = round(claimed_until - woke, 3)
        await cluster.wait_ready(self.targets, RECOVER_S)


class Partition(Fault):
    async def apply(self, cluster: Cluster) -> None:
        rng = self.rng
        voters = sorted(m.id for m in cluster.members.values() if m.id in cluster.voters)
        leader = await leader_or_any(cluster, rng)
        net = cluster.network
        match self.kind:
            case "partition-majority":
                minority_size = (len(voters) - 1) // 2
                others = [v for v in voters if v != leader]
                rng.shuffle(others)
                with_leader = rng.random() < 0.5 and leader in voters
                minority = (
                    [leader, *others[: minority_size - 1]]
                    if with_leader
                    else others[:minority_size]
                )
                majority = [v for v in voters if v not in minority]
                net.isolate([minority, majority])
                self.targets = sorted(minority)
                self.detail.update(minority=sorted(minority), majority=majority, leader=leader)
            case "partition-leader":
                rest = [v for v in voters if v != leader]
                net.isolate([[leader], rest])
                self.targets = [leader]
            case "partition-one-way":
                x = leader if rng.random() < 0.5 else rng.choice(voters)
                outgoing = rng.random() < 0.5
                for other in voters:
                    if other != x:
                        if outgoing:
                            net.block(x, other)  # x hears them; they do not hear x
                        else:
                            net.block(other, x)  # they hear x; x does not hear them
                self.targets = [x]
                self.detail.update(
                    direction="others do not hear it" if outgoing else "it does not hear others",
                    leader=leader,
                )
            case "partition-bridge":
                order = list(voters)
                rng.shuffle(order)
                half = (len(order) - 1) // 2
                left, bridge, right = order[:half], order[half], order[half + 1 :]
                net.isolate([left, right])
                self.targets = [bridge]
                self.detail.update(left=left, bridge=bridge, right=right, leader=leader)
        self.detail["blocked"] = [list(link) for link in net.blocked()]

    async def heal(self, cluster: Cluster) -> None:
        cluster.network.heal()

    async def settle(self, cluster: Cluster) -> None:
        await cluster.leader(RECOVER_S)


def newest_segment(data_dir: Path) -> Path | None:
    segments = sorted((data_dir / "wal").glob("*.wal"))  # <seq:016x>-<first:016x>.wal
    return segments[-1] if segments else None


def unsynced_tail(data_dir: Path, segment: Path) -> int | None:
    """Offset in `segment` (the newest) of the trailing run of HARD_STATE records that only
    move the commit index (same term and vote as the hard state before them), or None. The
    WAL writes those without an fsync (nothing depends on a commit index surviving a crash),
    so a power cut may lose them: dropping them stays inside the fault model."""
    source = f"wal/{segment.name}"
    previous: tuple[int, int] | None = None
    start: int | None = None
    for rec in dump(data_dir):
        if rec.type == "TORN":
            continue
        hs = rec.hard_state
        if rec.type in ("HARD_STATE", "SEGMENT_HEADER") and hs is not None:
            commit_only = rec.type == "HARD_STATE" and previous == (hs.term, hs.vote)
            previous = (hs.term, hs.vote)
            if commit_only and rec.source == source:
                start = rec.offset if start is None else start
                continue
        start = None
    return start


class TornWal(Fault):
    async def apply(self, cluster: Cluster) -> None:
        target = await pick(cluster, self.rng, self.rng.random() < 0.5)
        self.targets = [target]
        m = cluster.members[target]
        if self.kind == "truncated-wal":
            await self._freeze_at_unsynced_tail(cluster, target)
        cluster.kill(target)
        segment = newest_segment(m.data_dir)
        if segment is None:
            self.detail["skipped"] = "no WAL segment"
            return
        self.detail["last_index"] = log_position(m.data_dir).last_index
        data = segment.read_bytes()
        if self.kind == "truncated-wal":
            start = unsynced_tail(m.data_dir, segment)
            if start is None:
                self.detail["skipped"] = "no commit-only hard state at the tail to lose"
                return
            sizes = dict(record_frames(data))
            cut_to = start + self.rng.randint(0, sizes[start] - 1)
            os.truncate(segment, cut_to)
            self.detail.update(
                segment=segment.name,
                cut_bytes=len(data) - cut_to,
                records_lost=sum(1 for offset in sizes if offset >= start),
            )
        else:
            declared = self.rng.randint(200, 4096)
            written = self.rng.randint(0, 120)
            torn = FRAME.pack(declared, self.rng.getrandbits(32)) + self.rng.randbytes(written)
            with segment.open("ab") as f:
                f.write(torn)
            self.detail.update(segment=segment.name, torn_bytes=len(torn))
        try:
            position = log_position(m.data_dir)
            self.detail["torn_bytes_seen"] = position.torn_bytes
            self.detail["last_index_after"] = position.last_index
        except WalCorruptError as err:  # our damage must read as a torn tail, never corrupt
            self.problems.append(f"the damage reads as corruption, not a torn tail: {err}")

    async def _freeze_at_unsynced_tail(self, cluster: Cluster, target: int) -> None:
        """Leave the member SIGSTOPped at a moment its WAL ends in commit-only hard states
        (so a crash now may lose them), trying a few times; else leave it running."""
        m = cluster.members[target]
        for attempt in range(1, FREEZE_ATTEMPTS + 1):
            cluster.pause(target)
            segment = newest_segment(m.data_dir)
            if segment is not None:
                start = await asyncio.to_thread(unsynced_tail, m.data_dir, segment)
                if start is not None:
                    self.detail["freeze_attempts"] = attempt
                    return
            cluster.resume(target)
            await asyncio.sleep(self.rng.uniform(0.02, 0.2))

    async def heal(self, cluster: Cluster) -> None:
        if not cluster.members[self.targets[0]].running():
            cluster.start(self.targets[0])

    async def settle(self, cluster: Cluster) -> None:
        await cluster.wait_ready(self.targets, RECOVER_S)
        log = cluster.members[self.targets[0]].log().rsplit("=== nemesis", 1)[-1]
        self.detail["recovery_cut_logged"] = "cut a torn tail" in log


class RemoveReadd(Fault):
    async def apply(self, cluster: Cluster) -> None:
        rng = self.rng
        voters = sorted(v for v in cluster.voters if cluster.members[v].running())
        target = rng.choice(voters)
        self.targets = [target]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECOVER_S
        async with cluster.client(timeout_s=10.0, rpc_timeout_s=5.0) as c:
            while True:
                if await leader_or_any(cluster, rng) == target:
                    # The leader cannot remove itself: hand leadership over first.
                    other = rng.choice([v for v in voters if v != target])
                    moved = await until_ok(partial(c.transfer_leader, other), "transfer")
                    self.detail["transferred_to"] = other
                    self.detail["transfer"] = "ok" if moved is None else str(moved)
                result = await until_ok(lambda: c.member_remove(target), f"remove {target}")
                if not isinstance(result, ConcordError):
                    break
                if loop.time() > deadline:
                    raise ClusterError(f"removing member {target} failed: {result}")
                await asyncio.sleep(0.2)
        cluster.voters.discard(target)
        await asyncio.sleep(rng.uniform(0.0, 1.0))  # removed, and still running a moment
        cluster.kill(target)
        cluster.wipe(target)

    async def heal(self, cluster: Cluster) -> None:
        removed = self.targets[0]
        target = await cluster.add_gated_member()
        self.detail["replaced_by"] = target
        m = cluster.members[target]
        peer_url = f"https://127.0.0.1:{m.advertised_peer_port}"  # through its gate, like everyone
        client_url = f"https://{m.client_address}"
        async with cluster.client(timeout_s=10.0, rpc_timeout_s=5.0) as c:
            refused = await until_ok(
                lambda: c.member_add_learner(removed, f"member-{removed}", peer_url, client_url),
                f"add member {removed} again",
            )
            if not isinstance(refused, ConcordError) or refused.code != "FAILED_PRECONDITION":
                self.problems.append(f"the removed id {removed} was accepted again: {refused}")
            added = await until_ok(
                lambda: c.member_add_learner(target, m.name, peer_url, client_url),
                f"add member {target} as a learner",
            )
            if isinstance(added, ConcordError):
                raise ClusterError(f"adding member {target} in place of {removed} failed: {added}")
            cluster.start(target)
            await cluster.wait_converged(RECOVER_S)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + RECOVER_S
            while True:  # FAILED_PRECONDITION while it lags: retry
                result = await until_ok(lambda: c.member_promote(target), f"promote {target}")
                if not isinstance(result, ConcordError):
                    break
                if loop.time() > deadline:
                    raise ClusterError(f"member {target} was never promoted: {result}")
                await asyncio.sleep(0.2)
        cluster.voters.add(target)
        self.targets = [target]  # what `settle` waits for: the removed member stays gone
        await cluster.wait_ready([target], RECOVER_S)


class DiskFull(Fault):
    async def apply(self, cluster: Cluster) -> None:
        target = await pick(cluster, self.rng, self.rng.random() < 0.5)
        self.targets = [target]
        m = cluster.members[target]
        segment = newest_segment(m.data_dir)
        size = segment.stat().st_size if segment is not None else 0
        self.detail["limit_bytes"] = size
        self.detail["applied"] = cluster.limit_file_size(target, max(size, 1))

    async def heal(self, cluster: Cluster) -> None:
        target = self.targets[0]
        m = cluster.members[target]

        def wal_failed() -> bool:
            return "File too large" in m.log().rsplit("=== nemesis", 1)[-1]

        failed = wal_failed()
        self.detail["wal_error_logged"] = failed
        if failed and m.running():
            # Its WAL refuses further use, so the member must stop on its own (exit 1).
            loop = asyncio.get_running_loop()
            waited = loop.time()
            if m.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(m.popen.wait, EXIT_AFTER_WAL_FAILURE_S)
            self.detail["waited_for_exit_s"] = round(loop.time() - waited, 1)
            if m.running():
                self.problems.append(
                    f"member {target} was still running {EXIT_AFTER_WAL_FAILURE_S:.0f} s after "
                    "its WAL failed (disk full): it should have stopped; killed it"
                )
        exited = not m.running()
        self.detail["exited"] = exited
        self.detail["exit_status"] = m.popen.returncode if exited and m.popen else None
        if m.running():
            if failed:
                cluster.kill(target)
            else:
                cluster.limit_file_size(target, None)  # it wrote nothing meanwhile
        if not m.running():
            cluster.start(target)


@dataclass
class Timeline:
    """The faults of one run, in order."""

    clock: Clock
    events: list[Event] = field(default_factory=list)

    def note(self, fault: Fault, phase: str) -> None:
        self.events.append(
            Event(self.clock.now_us(), fault.kind, phase, list(fault.targets), dict(fault.detail))
        )
