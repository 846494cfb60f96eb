"""A scripted cluster of real `RawNode`s for scenario transcripts and paper-rule tests.

The idea is etcd-io/raft's interaction tests, written from scratch. A scenario file
(`tests/raft/scenarios/*.txt`) is a story told in commands; each command is followed by
`----` and the golden output it must produce, and a blank line ends the output:

    # Node 1 campaigns and wins.
    add-nodes 3
    ----
    added 1,2,3 conf(v=1,2,3)

    campaign 1
    ----
    [1] now pre-candidate term=0 leader=none

`pytest tests/raft --rewrite` replays every file and writes the actual output back in place,
so a change in the core shows up to a reviewer as a behaviour diff.

The harness owns everything the core deliberately leaves to its caller, and nothing else:
- a `MemoryStorage` per node, bootstrapped with a `ConfState` through `apply_snapshot`, and
  a `random.Random(node_id)`, so every run is the same;
- `process-ready`, the in-memory twin of `coordinator.runtime.driver.handle_ready`: persist
  the snapshot, entries and hard state, then put the messages on the network, then apply
  committed entries to a toy state machine (a list of the applied data), then `advance`;
- a network that is one FIFO queue, delivered only on command (`deliver`, `stabilize`), so
  loss, reordering and partitions are explicit and visible in the transcript;
- crashes that lose exactly what `process-ready` had not yet persisted.

After every input a node takes (a message stepped in, a tick, a campaign), any change of its
role, term, known leader or configuration is printed as `[id] now ...`; log lines the core
emits through its injected logger are printed as `[id] INFO ...`.

Output is formatted so that a reviewer can read it: entries are `term/index "data"` (`noop`
for a leader's empty entry, `conf(v=1,2,3 l=4)` for a configuration), messages are
`from->to TYPE term=.. field=..`. Message fields a format does not know about are still
printed (`name=value`), so new protocol fields can never change behaviour silently.

The same `Harness` is used directly, without scripts, by `test_paper.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
import random
import shlex
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from coordinator.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryKind,
    MemoryStorage,
    Message,
    MessageType,
    RaftError,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)

MT = MessageType

# --- formatting ------------------------------------------------------------------------------


def fmt_ids(ids: Iterable[int]) -> str:
    return ",".join(str(i) for i in sorted(ids))


def fmt_conf(conf: ConfState) -> str:
    """`conf(v=1,2,3 l=4)`."""
    out = f"v={fmt_ids(conf.voters)}"
    if conf.learners:
        out += f" l={fmt_ids(conf.learners)}"
    return f"conf({out})"


def fmt_data(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace").replace('"', '\\"')
    return f'"{text}"'


def fmt_entry(e: Entry) -> str:
    """`1/4 "x"`: term/index, then the payload."""
    head = f"{e.term}/{e.index}"
    if e.kind is EntryKind.CONF:
        return f"{head} {fmt_conf(ConfState.decode(e.data))}"
    if not e.data:
        return f"{head} noop"
    return f"{head} {fmt_data(e.data)}"


def fmt_entries(entries: Sequence[Entry]) -> str:
    """All entries when there are few; first, last and the count when there are many."""
    if len(entries) > 6:
        return f"[{fmt_entry(entries[0])} .. {fmt_entry(entries[-1])}] ({len(entries)} entries)"
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


_MESSAGE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Message)}
_ALWAYS_SHOWN = {"type", "to", "frm", "term"}


def fmt_msg(m: Message) -> str:
    """`1->2 APP term=1 idx=3 logterm=1 commit=3 entries=[1/4 "x"]`.

    Each type shows the fields it uses; any other field that is not at its default is
    appended as `name=value`, so nothing a message carries goes unseen.
    """
    parts = [f"{m.frm}->{m.to} {m.type.name} term={m.term}"]
    shown: set[str] = set()

    def put(text: str, *names: str) -> None:
        parts.append(text)
        shown.update(names)

    match m.type:
        case MT.APP:
            put(f"idx={m.index} logterm={m.log_term} commit={m.commit}", "index", "log_term")
            shown.add("commit")
            if m.entries:
                put(f"entries={fmt_entries(m.entries)}", "entries")
        case MT.APP_RESP:
            put(f"idx={m.index}", "index")
            if m.reject:
                put(f"REJECT hint={m.hint_index} hintterm={m.log_term}", "reject")
                shown.update({"hint_index", "log_term"})
        case MT.HEARTBEAT:
            put(f"commit={m.commit}", "commit")
        case MT.VOTE | MT.PRE_VOTE:
            put(f"idx={m.index} logterm={m.log_term}", "index", "log_term")
            if m.force:
                put("force", "force")
        case MT.SNAP | MT.SNAP_RESP:
            meta = m.snapshot_meta
            if meta is not None:
                put(f"snap={meta.term}/{meta.index}", "snapshot_meta")
            put(f"off={m.offset}", "offset")
            if m.type is MT.SNAP:
                put(f"data={fmt_data(m.data)}", "data")
                if m.done:
                    put("done", "done")
        case MT.READ_INDEX_RESP:
            put(f"idx={m.index}", "index")
        case _:
            pass
    if m.context and m.type in (MT.HEARTBEAT, MT.HEARTBEAT_RESP, MT.READ_INDEX, MT.READ_INDEX_RESP):
        put(f"ctx={m.context}", "context")
    if m.reject and "reject" not in shown:
        put("REJECT", "reject")
    for name, default in _MESSAGE_DEFAULTS.items():
        if name in shown or name in _ALWAYS_SHOWN:
            continue
        value = getattr(m, name)
        if value != default:
            parts.append(f"{name}={value!r}")
    return " ".join(parts)


def encode_fsm(values: Sequence[str]) -> bytes:
    """The toy state machine's snapshot image: the applied values, comma-separated."""
    return ",".join(values).encode()


def decode_fsm(data: bytes) -> list[str]:
    return data.decode().split(",") if data else []


# --- the cluster -----------------------------------------------------------------------------


class _CaptureLogger:
    """The core's injected logger: its lines go into the transcript."""

    def __init__(self, harness: Harness, node_id: int) -> None:
        self._h = harness
        self._id = node_id

    def debug(self, msg: str, /, *args: object) -> None:
        pass

    def info(self, msg: str, /, *args: object) -> None:
        self._h.emit(f"{self._h.indent}[{self._id}] INFO {msg % args}")

    def warning(self, msg: str, /, *args: object) -> None:
        self._h.emit(f"{self._h.indent}[{self._id}] WARN {msg % args}")


@dataclass
class Node:
    """One member: durable storage that survives crashes, and a RawNode that does not."""

    id: int
    storage: MemoryStorage
    options: dict[str, Any]
    """Config keyword arguments, kept so `restart` builds the same Config."""
    raw: RawNode | None = None
    fsm: list[str] = field(default_factory=list)
    """The toy state machine: every non-empty NORMAL entry's data, in apply order."""
    fsm_applied: int = 0
    fsm_conf: ConfState = field(default_factory=ConfState)
    """The configuration of the newest CONF entry applied (what a snapshot records)."""

    @property
    def up(self) -> bool:
        return self.raw is not None

    def restore_fsm(self, snap: Snapshot) -> None:
        self.fsm = decode_fsm(snap.data)
        self.fsm_applied = snap.meta.index
        self.fsm_conf = snap.meta.conf

    def apply(self, e: Entry) -> None:
        if e.index != self.fsm_applied + 1:
            raise AssertionError(f"node {self.id} applies {e.index} after {self.fsm_applied}")
        self.fsm_applied = e.index
        if e.kind is EntryKind.CONF:
            self.fsm_conf = ConfState.decode(e.data)
        elif e.data:
            self.fsm.append(e.data.decode())


_Observed = tuple[Role, int, int, ConfState]


class Harness:
    """Drives real RawNodes. Methods print into `out`; scripts call them via `run`."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.queue: list[Message] = []
        """Messages sent and not yet delivered or dropped, in send order."""
        self.partition: list[frozenset[int]] | None = None
        self.out: list[str] = []
        self.indent = ""

    # --- output ------------------------------------------------------------------------------

    def emit(self, line: str) -> None:
        self.out.append(line)

    @contextmanager
    def _indented(self, indent: str) -> Iterator[None]:
        saved, self.indent = self.indent, indent
        try:
            yield
        finally:
            self.indent = saved

    def _observe(self) -> dict[int, _Observed]:
        return {
            n.id: (n.raw.role, n.raw.term, n.raw.leader, n.raw.conf)
            for n in self.nodes.values()
            if n.raw is not None
        }

    @contextmanager
    def _watch(self, indent: str = "", note: str = "") -> Iterator[None]:
        """Print every node whose role, term, leader or configuration the body changed."""
        before = self._observe()
        with self._indented(indent):
            yield
        after = self._observe()
        for nid in sorted(after):
            was, now = before.get(nid), after[nid]
            if was is None:
                continue
            role, term, lead, conf = now
            if was[:3] != now[:3]:
                leader = str(lead) if lead != NONE else "none"
                self.emit(f"{indent}[{nid}] now {role.value} term={term} leader={leader}{note}")
            if was[3] != conf:
                self.emit(f"{indent}[{nid}] conf now {fmt_conf(conf)}{note}")

    # --- accessors for tests -----------------------------------------------------------------

    def raw(self, node_id: int) -> RawNode:
        raw = self.nodes[node_id].raw
        if raw is None:
            raise AssertionError(f"node {node_id} is down")
        return raw

    def leaders(self) -> list[int]:
        return [
            n.id for n in self.nodes.values() if n.raw is not None and n.raw.role is Role.LEADER
        ]

    def reachable(self, a: int, b: int) -> bool:
        if self.partition is None:
            return True
        return any(a in g and b in g for g in self.partition)

    def take(
        self, *, frm: int | None = None, to: int | None = None, mtype: MessageType | None = None
    ) -> list[Message]:
        """Remove and return queued messages matching the filter (to inspect or re-step)."""
        taken = [m for m in self.queue if _matches(m, frm, to, mtype)]
        self.queue = [m for m in self.queue if not _matches(m, frm, to, mtype)]
        return taken

    # --- inputs ------------------------------------------------------------------------------

    def add_nodes(
        self,
        count: int,
        *,
        voters: Iterable[int] | None = None,
        learners: Iterable[int] = (),
        **options: Any,
    ) -> list[int]:
        """Add `count` nodes with the next free ids, bootstrapped with the given membership
        (default: the new nodes are the voters). `options` are Config keyword arguments."""
        first = max(self.nodes, default=0) + 1
        ids = list(range(first, first + count))
        conf = ConfState(frozenset(ids if voters is None else voters), frozenset(learners))
        for nid in ids:
            storage = MemoryStorage()
            storage.apply_snapshot(Snapshot(SnapshotMeta(0, 0, conf)))
            node = Node(nid, storage, dict(options), fsm_conf=conf)
            self.nodes[nid] = node
            self._boot(node)
        return ids

    def _boot(self, node: Node) -> None:
        cfg = Config(
            id=node.id,
            rng=random.Random(node.id),
            logger=_CaptureLogger(self, node.id),
            **node.options,
        )
        node.raw = RawNode(cfg, node.storage)

    def tick(self, node_id: int, count: int = 1) -> None:
        for i in range(1, count + 1):
            with self._watch(note=f" (tick {i})" if count > 1 else ""):
                self.raw(node_id).tick()

    def tick_all(self, count: int = 1) -> None:
        for i in range(1, count + 1):
            for n in sorted(self.nodes):
                if self.nodes[n].up:
                    with self._watch(note=f" (tick {i})" if count > 1 else ""):
                        self.raw(n).tick()

    def campaign(self, node_id: int) -> None:
        with self._watch():
            self.raw(node_id).campaign()

    def _call(self, node_id: int, fn: Callable[[RawNode], object]) -> object:
        """Run a client call; print a refusal (RaftError, ValueError) instead of raising."""
        try:
            with self._watch():
                return fn(self.raw(node_id))
        except (RaftError, ValueError) as err:
            self.emit(f"error: {type(err).__name__}: {err}")
            return None

    def propose(self, node_id: int, data: str) -> tuple[int, int] | None:
        res = self._call(node_id, lambda r: r.propose(data.encode()))
        if isinstance(res, tuple):
            self.emit(f"proposed at {res[1]}/{res[0]}")
            return res
        return None

    def propose_conf_change(
        self, node_id: int, kind: ConfChangeType, target: int
    ) -> tuple[int, int] | None:
        cc = ConfChange(kind, target)
        res = self._call(node_id, lambda r: r.propose_conf_change(cc))
        if isinstance(res, tuple):
            self.emit(f"proposed at {res[1]}/{res[0]}")
            return res
        return None

    def read_index(self, node_id: int, context: int) -> None:
        self._call(node_id, lambda r: r.read_index(context))

    def transfer_leader(self, node_id: int, target: int) -> None:
        self._call(node_id, lambda r: r.transfer_leader(target))

    # --- the driver twin ---------------------------------------------------------------------

    def process_ready(self, node_id: int) -> Ready | None:
        """handle_ready over MemoryStorage: persist, send, apply, advance. Prints the Ready."""
        node = self.nodes[node_id]
        raw = self.raw(node_id)
        if not raw.has_ready():
            self.emit(f"> {node_id} has no Ready")
            return None
        rd = raw.ready()
        self.emit(f"> {node_id} handling Ready")
        self._print_ready(rd)
        st = node.storage
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if rd.entries:
            st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        self.queue.extend(rd.messages)
        if rd.snapshot is not None:
            node.restore_fsm(rd.snapshot)
        for e in rd.committed_entries:
            node.apply(e)
        raw.advance(rd)
        return rd

    def _print_ready(self, rd: Ready) -> None:
        emit = self.emit
        if rd.soft_state is not None:
            lead = rd.soft_state.leader or "none"
            emit(f"  soft: {rd.soft_state.role.value} leader={lead}")
        if rd.hard_state is not None:
            hs = rd.hard_state
            emit(f"  hard: term={hs.term} vote={hs.vote or 'none'} commit={hs.commit}")
        if rd.snapshot is not None:
            meta = rd.snapshot.meta
            data = fmt_data(rd.snapshot.data)
            emit(f"  snapshot: {meta.term}/{meta.index} {fmt_conf(meta.conf)} data={data}")
        if rd.entries:
            emit(f"  entries: {fmt_entries(rd.entries)}")
        if rd.committed_entries:
            emit(f"  committed: {fmt_entries(rd.committed_entries)}")
        for rs in rd.read_states:
            emit(f"  read-state: ctx={rs.context} idx={rs.index}")
        if rd.messages:
            emit("  messages:")
            for m in rd.messages:
                emit(f"    {fmt_msg(m)}")

    # --- the network -------------------------------------------------------------------------

    def deliver(
        self,
        *,
        frm: int | None = None,
        to: int | None = None,
        mtype: MessageType | None = None,
        drop: bool = False,
        count: int | None = None,
    ) -> int:
        """Deliver (or drop) queued messages matching the filter, grouped by receiver, in
        send order. Messages to a crashed node or across a partition are dropped. Returns
        how many messages were taken off the queue."""
        picked: list[Message] = []
        rest: list[Message] = []
        for m in self.queue:
            if _matches(m, frm, to, mtype) and (count is None or len(picked) < count):
                picked.append(m)
            else:
                rest.append(m)
        self.queue = rest
        for receiver in sorted({m.to for m in picked}):
            self.emit(f"> {receiver} receiving")
            for m in (m for m in picked if m.to == receiver):
                node = self.nodes.get(receiver)
                why = (
                    "dropped"
                    if drop
                    else "no such node"
                    if node is None
                    else "node down"
                    if not node.up
                    else "partition"
                    if not self.reachable(m.frm, m.to)
                    else None
                )
                if why is not None:
                    self.emit(f"  {fmt_msg(m)}  DROPPED" + ("" if drop else f" ({why})"))
                    continue
                self.emit(f"  {fmt_msg(m)}")
                with self._watch("    "):
                    self.raw(receiver).step(m)
        return len(picked)

    def stabilize(self, only: Sequence[int] = ()) -> None:
        """process-ready and deliver until nothing moves (restricted to `only` if given)."""
        ids = set(only) or set(self.nodes)
        for _ in range(1000):
            moved = False
            for n in sorted(ids):
                raw = self.nodes[n].raw
                if raw is not None and raw.has_ready():
                    self.process_ready(n)
                    moved = True
            for n in sorted(ids):
                if any(m.to == n for m in self.queue):
                    self.deliver(to=n)
                    moved = True
            if not moved:
                return
        raise AssertionError("stabilize did not converge in 1000 rounds")

    # --- faults ------------------------------------------------------------------------------

    def crash(self, node_id: int) -> None:
        """Lose everything in memory; what process-ready persisted survives."""
        node = self.nodes[node_id]
        raw = self.raw(node_id)
        st = node.storage
        st_status = raw.status()
        lost = [
            f"{raw.term_at(i)}/{i}"
            for i in range(st.first_index(), st_status.last_index + 1)
            if i > st.last_index() or st.term(i) != raw.term_at(i)
        ]
        hs = st.hard_state
        self.emit(
            f"[{node_id}] crashed; on disk: term={hs.term} vote={hs.vote or 'none'} "
            f"commit={hs.commit} last={st.last_index()}"
        )
        if lost:
            self.emit(f"  lost unpersisted entries: {' '.join(lost)}")
        if (st_status.term, st_status.vote) != (hs.term, hs.vote):
            self.emit(
                f"  lost unpersisted hard state: term={st_status.term} "
                f"vote={st_status.vote or 'none'}"
            )
        node.raw = None
        self._discard_inbound(node_id)

    def _discard_inbound(self, node_id: int) -> None:
        """A dead process's connections die with it: messages on their way to it are lost."""
        dropped = self.take(to=node_id)
        if dropped:
            self.emit(f"  {len(dropped)} message(s) in flight to it are lost")

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.up:
            raise AssertionError(f"node {node_id} is running; crash it first")
        self._discard_inbound(node_id)
        node.restore_fsm(node.storage.snapshot())
        self._boot(node)
        s = self.raw(node_id).status()
        self.emit(
            f"[{node_id}] restarted: term={s.term} vote={s.vote or 'none'} commit={s.commit} "
            f"applied={s.applied} last={s.last_index} {fmt_conf(s.conf)}"
        )

    def compact(self, node_id: int, index: int) -> None:
        """Snapshot the state machine at the applied index (unless already done), then
        discard the log through `index`."""
        node = self.nodes[node_id]
        st = node.storage
        if st.snapshot().meta.index < node.fsm_applied:
            st.create_snapshot(node.fsm_applied, node.fsm_conf, encode_fsm(node.fsm))
        st.compact(index)
        meta = st.snapshot().meta
        self.emit(
            f"snapshot {meta.term}/{meta.index} {fmt_conf(meta.conf)} "
            f"data={fmt_data(st.snapshot().data)}; log now starts at {st.first_index()}"
        )

    # --- introspection -----------------------------------------------------------------------

    def print_status(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.raw is None:
            hs = node.storage.hard_state
            self.emit(f"{node_id} down; on disk: term={hs.term} vote={hs.vote or 'none'}")
            return
        s = node.raw.status()
        line = (
            f"{node_id} {s.role.value} term={s.term} vote={s.vote or 'none'} "
            f"leader={s.leader or 'none'} commit={s.commit} applied={s.applied} "
            f"log=[{s.first_index},{s.last_index}] {fmt_conf(s.conf)}"
        )
        if s.lead_transferee:
            line += f" transferring-to={s.lead_transferee}"
        self.emit(line)
        for peer, p in s.peers.items():
            extra = (" learner" if p.learner else "") + ("" if p.recent_active else " inactive")
            self.emit(f"  {peer}: match={p.match} next={p.next} {p.state.value}{extra}")

    def print_log(self, node_id: int) -> None:
        node = self.nodes[node_id]
        st = node.storage
        snap = st.snapshot()
        if not snap.empty:
            m = snap.meta
            self.emit(f"snapshot {m.term}/{m.index} {fmt_conf(m.conf)} data={fmt_data(snap.data)}")
        stored = st.entries(st.first_index(), st.last_index() + 1)
        last = st.last_index()
        raw = node.raw
        for e in stored:
            if raw is not None and raw.term_at(e.index) != e.term:
                last = e.index - 1
                break
            self.emit(fmt_entry(e))
        if raw is not None:
            s = raw.status()
            for i in range(last + 1, s.last_index + 1):
                self.emit(f"{raw.term_at(i)}/{i} (unpersisted)")
            self.emit(f"commit={s.commit} applied={s.applied} fsm=[{' '.join(node.fsm)}]")
        else:
            self.emit(f"down; fsm lost; on disk: commit={st.hard_state.commit}")

    # --- scripts -----------------------------------------------------------------------------

    def run(self, line: str) -> str:
        """Run one script command; returns its output (never empty, never blank lines)."""
        tokens = shlex.split(line)
        name, rest = tokens[0], tokens[1:]
        handler = COMMANDS.get(name)
        if handler is None:
            raise ValueError(f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}")
        self.out = []
        handler(self, Args.parse(rest))
        lines = [ln.rstrip() for ln in self.out if ln.strip()]
        return "\n".join(lines) if lines else "ok"


def _matches(m: Message, frm: int | None, to: int | None, mtype: MessageType | None) -> bool:
    return (
        (frm is None or m.frm == frm)
        and (to is None or m.to == to)
        and (mtype is None or m.type is mtype)
    )


# --- script arguments ------------------------------------------------------------------------


@dataclass
class Args:
    pos: list[str]
    kw: dict[str, str]

    @classmethod
    def parse(cls, tokens: list[str]) -> Args:
        pos, kw = [], {}
        for t in tokens:
            if "=" in t:
                k, v = t.split("=", 1)
                kw[k] = v
            else:
                pos.append(t)
        return cls(pos, kw)

    def num(self, i: int, default: int | None = None) -> int:
        if i < len(self.pos):
            return int(self.pos[i])
        if default is None:
            raise ValueError(f"missing positional argument {i + 1}")
        return default

    def text(self, i: int) -> str:
        if i >= len(self.pos):
            raise ValueError(f"missing positional argument {i + 1}")
        return self.pos[i]

    def opt_int(self, key: str) -> int | None:
        v = self.kw.pop(key, None)
        return None if v is None else int(v)

    def opt_bool(self, key: str) -> bool | None:
        v = self.kw.pop(key, None)
        if v is None:
            return None
        if v not in ("true", "false"):
            raise ValueError(f"{key}= takes true or false, not {v!r}")
        return v == "true"

    def opt_ids(self, key: str) -> list[int] | None:
        v = self.kw.pop(key, None)
        if v is None:
            return None
        return [int(x) for x in v.split(",") if x]

    def done(self) -> None:
        if self.kw:
            raise ValueError(f"unknown options: {', '.join(sorted(self.kw))}")


# --- commands: one handler each --------------------------------------------------------------

COMMANDS: dict[str, Callable[[Harness, Args], None]] = {}

_CONFIG_OPTIONS = {
    "pre-vote": ("pre_vote", bool),
    "check-quorum": ("check_quorum", bool),
    "election": ("election_timeout_ticks", int),
    "heartbeat": ("heartbeat_ticks", int),
    "max-inflight": ("max_inflight_msgs", int),
    "max-msg-bytes": ("max_msg_bytes", int),
    "snapshot-chunk": ("snapshot_chunk_bytes", int),
}


def command(
    name: str,
) -> Callable[[Callable[[Harness, Args], None]], Callable[[Harness, Args], None]]:
    def register(fn: Callable[[Harness, Args], None]) -> Callable[[Harness, Args], None]:
        COMMANDS[name] = fn
        return fn

    return register


@command("add-nodes")
def cmd_add_nodes(h: Harness, a: Args) -> None:
    """Add N nodes (ids continue from the highest so far), each with its own MemoryStorage
    bootstrapped with the configuration, and Config options (defaults: the core's):

        add-nodes 3 [voters=1,2,3] [learners=4] [pre-vote=true] [check-quorum=true]
                    [election=10] [heartbeat=1] [max-inflight=256] [max-msg-bytes=1048576]
                    [snapshot-chunk=1048576]
        ----
        added 1,2,3 conf(v=1,2,3)

    `voters=` (empty) bootstraps a node that knows no configuration at all: it is a
    newcomer that learns its membership from the leader's log or snapshot.
    """
    count = a.num(0)
    voters = a.opt_ids("voters")
    learners = a.opt_ids("learners") or []
    options: dict[str, Any] = {}
    shown = ""
    for key, (name, kind) in _CONFIG_OPTIONS.items():
        value = a.opt_bool(key) if kind is bool else a.opt_int(key)
        if value is not None:
            options[name] = value
            shown += f" {key}={str(value).lower()}"
    a.done()
    ids = h.add_nodes(count, voters=voters, learners=learners, **options)
    conf = h.nodes[ids[0]].storage.snapshot().meta.conf
    h.emit(f"added {fmt_ids(ids)} {fmt_conf(conf)}{shown}")


@command("campaign")
def cmd_campaign(h: Harness, a: Args) -> None:
    """Make node N start an election now (a PreVote round first, if enabled).

    For example:

        campaign 1
        ----
        [1] now pre-candidate term=0 leader=none
    """
    a.done()
    h.campaign(a.num(0))


@command("tick")
def cmd_tick(h: Harness, a: Args) -> None:
    """Tick node N `count` times (default 1), printing any state change each tick causes.

    For example:

        tick 1 10
        ----
        [1] now pre-candidate term=1 leader=none (tick 10)
    """
    a.done()
    h.tick(a.num(0), a.num(1, 1))


@command("tick-all")
def cmd_tick_all(h: Harness, a: Args) -> None:
    """Tick every running node, in id order, `count` times (default 1).

    For example:

        tick-all 3
        ----
        ok
    """
    a.done()
    h.tick_all(a.num(0, 1))


@command("propose")
def cmd_propose(h: Harness, a: Args) -> None:
    """Propose data on node N, one proposal per value; prints the term/index each got, or
    the refusal:

        propose 1 x y
        ----
        proposed at 1/3
        proposed at 1/4
    """
    a.done()
    a.text(1)
    for i in range(1, len(a.pos)):
        h.propose(a.num(0), a.text(i))


@command("propose-conf-change")
def cmd_propose_conf_change(h: Harness, a: Args) -> None:
    """Propose a single-server membership change on node N.

    For example:

        propose-conf-change 1 add-learner 4
        ----
        [1] conf now conf(v=1,2,3 l=4)
        proposed at 1/3
    """
    a.done()
    h.propose_conf_change(a.num(0), ConfChangeType(a.text(1)), a.num(2))


@command("read-index")
def cmd_read_index(h: Harness, a: Args) -> None:
    """Request a linearizable read point on node N, tagged `ctx` (an int). The answer comes
    out later as `read-state: ctx=.. idx=..` in a Ready:

        read-index 1 7
        ----
        ok
    """
    a.done()
    h.read_index(a.num(0), a.num(1))


@command("transfer-leader")
def cmd_transfer_leader(h: Harness, a: Args) -> None:
    """Ask leader N to hand leadership to `target`.

    For example:

        transfer-leader 1 3
        ----
        ok
    """
    a.done()
    h.transfer_leader(a.num(0), a.num(1))


@command("process-ready")
def cmd_process_ready(h: Harness, a: Args) -> None:
    """Handle node N's Ready like the driver: print it, persist snapshot, entries and hard
    state to its MemoryStorage, queue the messages, apply committed entries, advance:

        process-ready 1
        ----
        > 1 handling Ready
          soft: leader leader=1
          hard: term=1 vote=1 commit=0
          entries: [1/1 noop]
          messages:
            1->2 APP term=1 idx=0 logterm=0 commit=0 entries=[1/1 noop]
    """
    a.done()
    for i in range(len(a.pos)):
        h.process_ready(a.num(i))


@command("deliver")
def cmd_deliver(h: Harness, a: Args) -> None:
    """Deliver queued messages, optionally only those from/to a node or of one type, and at
    most `count` of them; with drop=true they are lost instead:

        deliver [from=1] [to=2] [type=APP] [count=1] [drop=true]
        ----
        > 2 receiving
          1->2 APP term=1 idx=0 logterm=0 commit=0 entries=[1/1 noop]
            [2] now follower term=1 leader=1
    """
    frm, to, count = a.opt_int("from"), a.opt_int("to"), a.opt_int("count")
    type_name = a.kw.pop("type", None)
    drop = a.opt_bool("drop") or False
    a.done()
    mtype = MessageType[type_name] if type_name is not None else None
    if not h.deliver(frm=frm, to=to, mtype=mtype, drop=drop, count=count):
        h.emit("no messages")


@command("stabilize")
def cmd_stabilize(h: Harness, a: Args) -> None:
    """process-ready and deliver until nothing moves; `stabilize 1 2` involves only those.

    For example:

        stabilize
        ----
        > 1 handling Ready
        ...
    """
    a.done()
    h.stabilize([a.num(i) for i in range(len(a.pos))])


@command("partition")
def cmd_partition(h: Harness, a: Args) -> None:
    """Cut the network into groups; messages between groups are dropped on delivery (nodes
    not named are each isolated):

        partition 1,2 / 3
        ----
        ok
    """
    a.done()
    groups = " ".join(a.pos).split("/")
    h.partition = [frozenset(int(x) for x in g.replace(",", " ").split()) for g in groups]
    named = set().union(*h.partition)
    h.partition += [frozenset({n}) for n in h.nodes if n not in named]


@command("heal")
def cmd_heal(h: Harness, a: Args) -> None:
    """Remove any partition.

    For example:

        heal
        ----
        ok
    """
    a.done()
    h.partition = None


@command("crash")
def cmd_crash(h: Harness, a: Args) -> None:
    """Kill node N: its RawNode and state machine are lost, its MemoryStorage is kept.
    Prints what is on disk and which entries had not been persisted:

        crash 1
        ----
        [1] crashed; on disk: term=1 vote=1 commit=1 last=1
          lost unpersisted entries: 1/2
    """
    a.done()
    h.crash(a.num(0))


@command("restart")
def cmd_restart(h: Harness, a: Args) -> None:
    """Boot node N again from its MemoryStorage (same Config, a fresh Random(N)).

    For example:

        restart 1
        ----
        [1] restarted: term=1 vote=1 commit=1 applied=0 last=1 conf(v=1,2,3)
    """
    a.done()
    h.restart(a.num(0))


@command("compact")
def cmd_compact(h: Harness, a: Args) -> None:
    """Snapshot node N's state machine at its applied index and discard the log through
    `index` (at most the snapshot's index):

        compact 1 5
        ----
        snapshot 1/6 conf(v=1,2,3) data="a,b,c,d,e"; log now starts at 6
    """
    a.done()
    h.compact(a.num(0), a.num(1))


@command("status")
def cmd_status(h: Harness, a: Args) -> None:
    """Print node N's status; a leader adds one line per member's progress.

    For example:

        status 1
        ----
        1 leader term=1 vote=1 leader=1 commit=1 applied=1 log=[1,1] conf(v=1,2,3)
          1: match=1 next=2 replicate
          2: match=1 next=2 replicate
          3: match=0 next=2 probe inactive
    """
    a.done()
    for i in range(len(a.pos)):
        h.print_status(a.num(i))


@command("log")
def cmd_log(h: Harness, a: Args) -> None:
    """Print node N's log: the snapshot, persisted entries, unpersisted ones, and the
    commit/applied indexes with the toy state machine's contents:

        log 1
        ----
        1/1 noop
        1/2 "x"
        commit=2 applied=2 fsm=[x]
    """
    a.done()
    h.print_log(a.num(0))


# --- scenario files --------------------------------------------------------------------------


@dataclass
class Case:
    line_no: int
    command: str
    expected: list[str]


Chunk = Case | str
"""A case, or one line of prose (comment or blank) kept verbatim."""


def parse_script(text: str) -> list[Chunk]:
    """Comment (#) and blank lines are prose. Any other line is a command, followed by a
    `----` line and its output, which ends at the next blank line or the end of file."""
    lines = text.splitlines()
    chunks: list[Chunk] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            chunks.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ValueError(f"line {i + 2}: expected '----' after command {line!r}")
        j = i + 2
        while j < len(lines) and lines[j].strip():
            j += 1
        chunks.append(Case(i + 1, line, lines[i + 2 : j]))
        i = j + 1  # the blank line that ends the output belongs to the case
    return chunks


def render_script(chunks: Sequence[Chunk]) -> str:
    lines: list[str] = []
    for c in chunks:
        if isinstance(c, str):
            lines.append(c)
        else:
            lines += [c.command, "----", *c.expected, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def replay(text: str) -> str:
    """Run every command of a scenario on a fresh Harness; the file with actual outputs."""
    h = Harness()
    out: list[Chunk] = []
    for c in parse_script(text):
        if isinstance(c, str):
            out.append(c)
            continue
        try:
            actual = h.run(c.command)
        except Exception as err:
            raise AssertionError(f"line {c.line_no}: {c.command!r} failed: {err!r}") from err
        out.append(Case(c.line_no, c.command, actual.splitlines()))
    return render_script(out)


def diff(expected: str, actual: str, name: str) -> str:
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            f"{name} (golden)",
            f"{name} (actual)",
        )
    )
