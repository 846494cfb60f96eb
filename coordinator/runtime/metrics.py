"""Prometheus metrics of one member, in a registry of their own.

Two kinds of metric live here.

- **Events** are counted or timed where they happen: proposals and apply batches (the loop
  reports them: `MemberMetrics` is its `LoopEvents`), watches opened, closed and ended as slow
  consumers (the watch hub reports them the same way), fsyncs (`MeteredLog`, from the WAL's
  plain counters after every write), peer round trips (the transport's callback). These are
  ordinary prometheus_client counters, gauges and histograms. The metrics observe; they never
  subclass what they count, so a caller that takes another path (the server submits
  proposals, it does not call `propose`) is still counted.
- **State** (term, role, commit and applied index, snapshot, leases, locks, sealing keys,
  peers, and the lessor's renewal and expiry counts, plain integers in the pure lessor) is
  read at scrape time by `_StateCollector` from the objects that own it, so a scrape shows
  the present and nothing has to remember to update a gauge. Scrapes run on the member's
  event loop (the HTTP server is asyncio), so reading the loop's state needs no lock.

The registry is dedicated (not prometheus_client's global one), so several members can live
in one process (tests) and the metrics page shows nothing but Concord's own series.

Names (all prefixed `concord_`): see `MemberMetrics` and `_StateCollector.collect`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.fsm import StateMachine
from coordinator.raft import ConfState, Entry, HardState, Role, Snapshot, SnapshotData, Status
from coordinator.storage import DiskWal, WalMetrics

from .loop import RaftLoop
from .peer_book import PeerStats

_FSYNC_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
_APPLY_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
)  # fmt: skip
_RTT_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class MemberMetrics:
    """The member's registry and its event metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.proposals_committed = Counter(
            "concord_proposals_committed",
            "Proposals that were committed and applied (including those whose command the "
            "state machine refused with an error result).",
            registry=r,
        )
        self.proposals_failed = Counter(
            "concord_proposals_failed",
            "Proposals whose caller got no commit, by reason: NotLeaderError, "
            "ProposalLostError (outcome unknown), StoppedError, ..., or CancelledError (the "
            "caller stopped waiting, e.g. its deadline passed; the entry may still commit).",
            ["reason"],
            registry=r,
        )
        self.proposals_pending = Gauge(
            "concord_proposals_pending", "Proposals waiting for their outcome.", registry=r
        )
        self.wal_fsync_seconds = Histogram(
            "concord_wal_fsync_duration_seconds",
            "Duration of each WAL fsync (fdatasync of a segment, its header or a snapshot).",
            buckets=_FSYNC_BUCKETS_S,
            registry=r,
        )
        self.apply_seconds = Histogram(
            "concord_apply_duration_seconds",
            "Time to apply one batch of committed entries to the state machine (including "
            "any snapshot the batch triggered).",
            buckets=_APPLY_BUCKETS_S,
            registry=r,
        )
        self.apply_entries = Counter(
            "concord_applied_entries", "Committed entries applied by this process.", registry=r
        )
        self.peer_round_trip_seconds = Histogram(
            "concord_peer_round_trip_seconds",
            "Leader to follower round trip: an APP or HEARTBEAT to its response.",
            ["peer"],
            buckets=_RTT_BUCKETS_S,
            registry=r,
        )
        self.watches_open = Gauge(
            "concord_watches_open", "Watch streams the watch hub is feeding.", registry=r
        )
        self.watch_slow_consumer_ends = Counter(
            "concord_watch_slow_consumer_ends",
            "Watch streams ended as slow consumers (their queue would have overflowed; the "
            "client resumes from the revision the end names).",
            registry=r,
        )
        self.locked = Gauge(
            "concord_member_locked",
            "1 while the member waits for its unlock key (autolock).",
            registry=r,
        )
        self.workload_denied = Counter(
            "concord_workload_denied",
            "Calls of workload identities (ServiceAccount tokens) that were refused, by RPC "
            "(verb, e.g. Lock.Lock) and reason: namespace, admin, lease, unseal-scope, "
            "unscoped, or why the token was not accepted (missing, expired, audience, "
            "signature, ...). The token is never a label.",
            ["verb", "reason"],
            registry=r,
        )
        self._state = _StateCollector()
        r.register(self._state)

    # LoopEvents (coordinator.runtime.loop)
    def proposal_started(self) -> None:
        self.proposals_pending.inc()

    def proposal_settled(self, error: BaseException | None) -> None:
        self.proposals_pending.dec()
        if error is None:
            self.proposals_committed.inc()
        else:
            self.proposals_failed.labels(reason=type(error).__name__).inc()

    def applied_batch(self, entries: int, duration_s: float) -> None:
        self.apply_seconds.observe(duration_s)
        self.apply_entries.inc(entries)

    # WatchEvents (coordinator.server._watchers; structural, the runtime cannot import it)
    def watches_changed(self, open_watches: int) -> None:
        self.watches_open.set(open_watches)

    def watch_ended_slow(self) -> None:
        self.watch_slow_consumer_ends.inc()

    def count_denied(self, verb: str, reason: str) -> None:
        self.workload_denied.labels(verb=verb, reason=reason).inc()

    def observe_round_trip(self, peer: int, seconds: float) -> None:
        self.peer_round_trip_seconds.labels(peer=str(peer)).observe(seconds)

    def attach(
        self,
        loop: RaftLoop,
        *,
        wal_metrics: WalMetrics | None = None,
        peers: Callable[[], dict[int, PeerStats]] | None = None,
        now_s: Callable[[], float] | None = None,
    ) -> None:
        """Export the state of `loop` (and of its WAL and transport) from now on."""
        self._state.loop = loop
        self._state.wal_metrics = wal_metrics
        self._state.peers = peers
        self._state.now_s = now_s


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.loop: RaftLoop | None = None
        self.wal_metrics: WalMetrics | None = None
        self.peers: Callable[[], dict[int, PeerStats]] | None = None
        self.now_s: Callable[[], float] | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # names vary with attachment; registering must not call collect()

    def collect(self) -> Iterable[Metric]:
        loop = self.loop
        if loop is None:
            return
        st: Status = loop.status()
        yield _gauge("concord_raft_term", "Current Raft term.", st.term)
        role = GaugeMetricFamily(
            "concord_raft_role", "1 for this member's current Raft role.", labels=["role"]
        )
        for r in Role:
            role.add_metric([r.value], 1.0 if st.role is r else 0.0)
        yield role
        yield _gauge(
            "concord_raft_leader", "Id of the leader this member knows (0: none).", st.leader
        )
        yield CounterMetricFamily(
            "concord_raft_leader_changes",
            "Times this member saw a new leader.",
            value=loop.leader_changes,
        )
        yield CounterMetricFamily(
            "concord_lease_reads_served",
            "Linearizable reads this member served on its leader lease, without a round trip "
            "(--read-mode lease; 0 with ReadIndex barriers).",
            value=loop.lease_reads_served,
        )
        yield _gauge("concord_raft_commit_index", "Highest log index known committed.", st.commit)
        yield _gauge(
            "concord_raft_applied_index",
            "Highest log index applied to the state machine.",
            loop.fsm.applied_index,
        )
        yield _gauge("concord_raft_last_index", "Last index in the local log.", st.last_index)
        yield _gauge("concord_raft_voters", "Voters in the configuration.", len(st.conf.voters))
        snap = loop.storage.snapshot()
        yield _gauge("concord_snapshot_index", "Index the newest snapshot covers.", snap.meta.index)
        yield _gauge(
            "concord_snapshot_size_bytes", "Size of the newest snapshot's state.", len(snap.data)
        )
        yield _gauge("concord_leases", "Leases alive in the state machine.", len(loop.fsm.leases()))
        lessor = loop.lessor
        yield CounterMetricFamily(
            "concord_lease_renewals",
            "Lease renewals this member's lessor acknowledged while leading (in memory).",
            value=lessor.renewed,
        )
        yield CounterMetricFamily(
            "concord_lease_expiries",
            "Leases this member's lessor named in expiry proposals while leading.",
            value=lessor.expiries_proposed,
        )
        holders, waiters = _lock_census(loop.fsm)
        yield _gauge("concord_lock_holders", "Lock holders, over every lock.", holders)
        yield _gauge("concord_lock_waiters", "Queued lock acquirers, over every lock.", waiters)
        yield from _sealing_key_metrics(loop)
        wm = self.wal_metrics
        if wm is not None:
            yield CounterMetricFamily(
                "concord_snapshots_written",
                "Snapshots written by this process.",
                value=wm.snapshots_written,
            )
            yield CounterMetricFamily(
                "concord_wal_fsyncs", "WAL fsyncs by this process.", value=wm.fsyncs
            )
            yield CounterMetricFamily(
                "concord_wal_bytes_written", "Bytes written to the WAL.", value=wm.bytes_written
            )
        if self.peers is not None:
            yield from _peer_metrics(self.peers(), self.now_s)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _peer_metrics(
    stats: dict[int, PeerStats], now_s: Callable[[], float] | None
) -> Iterable[Metric]:
    reachable = GaugeMetricFamily(
        "concord_peer_reachable", "1 if the peer was heard from recently.", labels=["peer"]
    )
    connected = GaugeMetricFamily(
        "concord_peer_connected", "1 if the stream to the peer is open.", labels=["peer"]
    )
    sent = CounterMetricFamily(
        "concord_peer_messages_sent", "Raft messages written to the peer.", labels=["peer"]
    )
    dropped = CounterMetricFamily(
        "concord_peer_messages_dropped",
        "Raft messages to the peer dropped (queue full, stream broken).",
        labels=["peer"],
    )
    received = CounterMetricFamily(
        "concord_peer_messages_received", "Raft messages received from the peer.", labels=["peer"]
    )
    silence = GaugeMetricFamily(
        "concord_peer_last_heard_seconds",
        "Seconds since the peer was last heard from (absent: never).",
        labels=["peer"],
    )
    now = now_s() if now_s is not None else None
    for peer_id, p in stats.items():
        label = [str(peer_id)]
        reachable.add_metric(label, 1.0 if p.reachable else 0.0)
        connected.add_metric(label, 1.0 if p.connected else 0.0)
        sent.add_metric(label, p.sent)
        dropped.add_metric(label, p.dropped)
        received.add_metric(label, p.received)
        if now is not None and p.last_heard_s is not None:
            silence.add_metric(label, max(0.0, now - p.last_heard_s))
    yield from (reachable, connected, sent, dropped, received, silence)


def _sealing_key_metrics(loop: RaftLoop) -> Iterable[Metric]:
    """How many sealing keys the replicated state holds, and the age of the newest (the one
    that seals): this member's wall clock against the `created_ms` the proposing member
    stamped on it. The leader renews on a schedule (--sealing-key-renew-days), so an age
    well past that period means renewal has stopped; the chart's ConcordSealingKeyStale
    alert reads it. No key yet (none is made before the first sealing certificate is asked
    for): the age family is exported empty, so an alert on it stays quiet instead of firing
    on a cluster that seals nothing. A member whose clock is behind the proposer's would see
    a negative age; it is clamped at 0 (clock skew is not this metric's business)."""
    keys = loop.fsm.sealing_keys()
    yield _gauge("concord_sealing_keys", "Sealing key pairs in the replicated state.", len(keys))
    age = GaugeMetricFamily(
        "concord_sealing_key_age_seconds",
        "Age of the newest sealing key (the one that seals) by this member's wall clock "
        "(absent: no key yet).",
    )
    if keys:
        age.add_metric([], max(0.0, (loop.clock.wall_ms() - keys[-1].created_ms) / 1000))
    yield age


def _lock_census(fsm: StateMachine) -> tuple[int, int]:
    """(holders, waiters) over every lock.

    The state machine's public API answers per lock name only, so this reads its lock
    table's name list; replace with a public census when the state machine offers one."""
    names = fsm._locks.names()
    holders = sum(len(fsm.lock_holders(n)) for n in names)
    waiters = sum(len(fsm.lock_waiters(n)) for n in names)
    return holders, waiters


# --- event sources ---------------------------------------------------------------------------


class MeteredLog:
    """The member's `DiskWal`, passed through, observing the fsync histogram after every
    write from the WAL's counters: each new fsync since the last look is one sample (the
    most recent exactly, any others of the same call at their average)."""

    def __init__(self, wal: DiskWal, histogram: Histogram) -> None:
        self.wal = wal
        self._histogram = histogram
        self._seen = wal.metrics.fsyncs
        self._seen_total_s = wal.metrics.fsync_total_s

    @property
    def metrics(self) -> WalMetrics:
        return self.wal.metrics

    def _observe(self) -> None:
        wm = self.wal.metrics
        n = wm.fsyncs - self._seen
        if n > 0:
            total_s = wm.fsync_total_s - self._seen_total_s
            self._histogram.observe(wm.fsync_last_s)
            if n > 1:
                rest_s = max(0.0, total_s - wm.fsync_last_s) / (n - 1)
                for _ in range(n - 1):
                    self._histogram.observe(rest_s)
        self._seen = wm.fsyncs
        self._seen_total_s = wm.fsync_total_s

    # LogStorage
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.wal.initial_state()

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        return self.wal.entries(lo, hi, max_bytes)

    def term(self, index: int) -> int:
        return self.wal.term(index)

    def first_index(self) -> int:
        return self.wal.first_index()

    def last_index(self) -> int:
        return self.wal.last_index()

    def snapshot(self) -> Snapshot:
        return self.wal.snapshot()

    # Wal
    def save(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        try:
            self.wal.save(entries, hard_state)
        finally:
            self._observe()

    def save_snapshot(self, snapshot: Snapshot) -> None:
        try:
            self.wal.save_snapshot(snapshot)
        finally:
            self._observe()

    # DurableLog
    def create_snapshot(self, index: int, conf: ConfState, data: SnapshotData) -> Snapshot:
        try:
            return self.wal.create_snapshot(index, conf, data)
        finally:
            self._observe()

    def compact(self, index: int) -> int:
        try:
            return self.wal.compact(index)
        finally:
            self._observe()

    def rotate_dek(self) -> int:
        return self.wal.rotate_dek()

    def retire_keys(self) -> list[int]:
        return self.wal.retire_keys()

    def close(self) -> None:
        self.wal.close()
