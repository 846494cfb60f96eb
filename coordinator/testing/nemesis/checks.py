"""Checkers for the workloads' histories. Each returns a `CheckReport`; none ever guesses.

Every check is *sound*: it reports a violation only when no assignment of the unknown
outcomes (`info` ops: applied at any time after their call, or never) and no placement of
each operation inside its [call, return] interval could explain what the clients saw.

- **register**: linearizability of reads, writes and compare-and-swaps, per key, with the
  simulator's checker (`coordinator.testing.linearizability`: Wing & Gong search with Lowe's
  memoization; unknown ops return at +infinity and may or may not take effect).
- **sequence**: every value returned is unique (no value is ever handed out twice, whatever
  crashed); each worker's values strictly increase; and in real time, a `next` that returned
  before another was called returned smaller values (the sequence is linearizable).
- **set**: every acknowledged add is present at the end, through the leader (a linearizable
  read) and in every member's own state machine once it caught up; an add the service
  refused is absent.
- **locks**: fencing tokens are unique and increase in real-time grant order; the fenced
  resource never saw two holders interleave; and no two holders were confirmed current at
  overlapping times by CheckFence (A's check said current after B was granted, and B's later
  check said B still held it: both held the mutex at the instant of A's check).
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from coordinator.testing.kv_model import KvInput, KvModel
from coordinator.testing.linearizability import UNKNOWN, Operation, check

from .history import Op
from .workloads import Grant, ResourceWrite

PROBLEMS_SHOWN_MAX = 10
MAX_STATES = 2_000_000


@dataclass
class CheckReport:
    workload: str
    ok: bool | None
    """True: no violation; False: a violation (see `problems`); None: inconclusive."""
    ops: int
    """Operations checked."""
    counts: dict[str, int] = field(default_factory=dict)
    """ok / fail / info operations."""
    details: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.ok = False
        if len(self.problems) < PROBLEMS_SHOWN_MAX:
            self.problems.append(problem)

    def to_json(self) -> dict[str, object]:
        return {
            "workload": self.workload,
            "ok": self.ok,
            "ops": self.ops,
            "counts": self.counts,
            "details": self.details,
            "problems": self.problems,
        }


def _counts(ops: Sequence[Op]) -> dict[str, int]:
    out = {"ok": 0, "fail": 0, "info": 0}
    for op in ops:
        out[op.outcome] += 1
    return out


def _show(op: Op) -> str:
    ret = "?" if op.ret_us is None else f"{op.ret_us / 1e6:.3f}s"
    return (
        f"process {op.process} {op.f}{op.args} [{op.call_us / 1e6:.3f}s, {ret}] -> "
        f"{op.outcome} {op.result!r}{' ' + op.error if op.error else ''}"
    )


# --- register ----------------------------------------------------------------------------------


def register_operations(ops: Sequence[Op]) -> list[Operation[KvInput, object]]:
    """The history in the linearizability checker's terms (refused ops left out: they did
    not happen)."""
    out: list[Operation[KvInput, object]] = []
    for op in ops:
        if op.outcome == "fail":
            continue
        key = str(op.args["key"])
        match op.f:
            case "read":
                inp = KvInput("get", key)
            case "write":
                inp = KvInput("put", key, value=str(op.args["value"]))
            case "cas":
                expected = op.args["expected"]
                inp = KvInput(
                    "cas",
                    key,
                    value=str(op.args["value"]),
                    expected=None if expected is None else str(expected),
                )
            case _:
                raise ValueError(f"not a register operation: {op.f}")
        if op.outcome == "info":
            out.append(Operation(op.process, inp, op.call_us, None, UNKNOWN))
        else:
            out.append(Operation(op.process, inp, op.call_us, op.ret_us, op.result))
    return out


def check_register(ops: Sequence[Op]) -> CheckReport:
    report = CheckReport("register", True, len(ops), _counts(ops))
    history = register_operations(ops)
    result = check(KvModel(), history, max_states=MAX_STATES)
    report.details = {
        "partitions": result.partitions,
        "states_explored": result.states_explored,
        "refused": report.counts["fail"],
    }
    if result.ok is False:
        report.fail(result.explanation)
    elif result.ok is None:
        report.ok = None
        report.problems.append(result.explanation)
    return report


# --- sequence ----------------------------------------------------------------------------------


def check_sequence(ops: Sequence[Op], clients: int) -> CheckReport:
    report = CheckReport("sequence", True, len(ops), _counts(ops))
    done = [op for op in ops if op.outcome == "ok"]
    values: list[list[int]] = [list(op.result) for op in done]  # type: ignore[call-overload]
    owner: dict[int, Op] = {}
    for op, vals in zip(done, values, strict=True):
        if len(vals) != op.args["count"]:
            report.fail(f"asked for {op.args['count']} values, got {vals}: {_show(op)}")
        for v in vals:
            if v in owner:
                report.fail(f"value {v} returned twice: {_show(owner[v])} and {_show(op)}")
            owner[v] = op
    # Each worker's values strictly increase (its ops are recorded in the order it ran them).
    by_worker: dict[int, list[list[int]]] = defaultdict(list)
    for op, vals in zip(done, values, strict=True):
        by_worker[op.process % clients].append(vals)
    for worker, blocks in sorted(by_worker.items()):
        flat = [v for block in blocks for v in block]
        for a, b in itertools.pairwise(flat):
            if not a < b:
                report.fail(f"worker {worker}: value {b} came after {a}")
                break
    # Real time: an op that returned before another was called returned smaller values.
    by_ret = sorted(
        ((op.ret_us or 0, max(vals)) for op, vals in zip(done, values, strict=True) if vals)
    )
    rets = [r for r, _ in by_ret]
    prefix_max = list(itertools.accumulate((m for _, m in by_ret), max))
    for op, vals in zip(done, values, strict=True):
        k = bisect.bisect_left(rets, op.call_us)  # ops that returned strictly before the call
        if vals and k and prefix_max[k - 1] >= min(vals):
            report.fail(
                f"{_show(op)} returned {vals}, but an op that had already returned got "
                f"{prefix_max[k - 1]}"
            )
    report.details = {
        "values": len(owner),
        "max_value": max(owner) if owner else 0,
        "unknown_calls": report.counts["info"],
    }
    return report


# --- set ---------------------------------------------------------------------------------------


def check_set(
    ops: Sequence[Op], final_leader: Sequence[str] | None, final_members: dict[int, list[str]]
) -> CheckReport:
    report = CheckReport("set", True, len(ops), _counts(ops))
    acked = {str(op.args["element"]) for op in ops if op.outcome == "ok"}
    refused = {str(op.args["element"]) for op in ops if op.outcome == "fail"}
    unknown = {str(op.args["element"]) for op in ops if op.outcome == "info"}
    if final_leader is None:
        report.ok = None
        report.problems.append("the final read through the leader did not succeed")
        return report
    final = set(final_leader)
    lost = sorted(acked - final)
    if lost:
        report.fail(f"{len(lost)} acknowledged add(s) missing from the final read: {lost[:20]}")
    if refused & final:
        report.fail(f"refused add(s) present at the end: {sorted(refused & final)[:20]}")
    for member, elements in sorted(final_members.items()):
        missing = sorted(acked - set(elements))
        if missing:
            report.fail(f"member {member} lacks {len(missing)} acknowledged add(s): {missing[:20]}")
    report.details = {
        "acknowledged": len(acked),
        "final": len(final),
        "unknown_present": len(unknown & final),
        "unknown_absent": len(unknown - final),
        "members_read": sorted(final_members),
    }
    return report


# --- locks -------------------------------------------------------------------------------------


def _grants_with(grants: Sequence[Grant], token: int) -> list[int]:
    return [g.id for g in grants if g.token == token]


def check_locks(
    ops: Sequence[Op], grants: Sequence[Grant], writes: Sequence[ResourceWrite]
) -> CheckReport:
    report = CheckReport("locks", True, len(ops), _counts(ops))
    held = [g for g in grants if g.acquire_ret_us is not None]
    # Tokens are unique...
    dup = [t for t, n in Counter(g.token for g in held).items() if n > 1]
    for t in dup:
        report.fail(f"fencing token {t} granted more than once: grants {_grants_with(held, t)}")
    # ...and increase in real-time grant order.
    by_ret = sorted(held, key=lambda g: g.acquire_ret_us or 0)
    rets = [g.acquire_ret_us or 0 for g in by_ret]
    prefix_max = list(itertools.accumulate((g.token for g in by_ret), max))
    for g in held:
        k = bisect.bisect_left(rets, g.acquire_call_us)
        if k and prefix_max[k - 1] >= g.token:
            report.fail(
                f"grant {g.id} got token {g.token} although a grant that had already returned "
                f"got {prefix_max[k - 1]}"
            )
    # The fenced resource: accepted writes come in token order, never interleaving holders.
    accepted = [w for w in writes if w.accepted]
    finished: set[int] = set()
    for w1, w2 in itertools.pairwise(accepted):
        if w1.grant != w2.grant:
            finished.add(w1.grant)
            if w2.grant in finished:
                report.fail(
                    f"the resource saw grant {w2.grant} (token {w2.token}) write again after "
                    f"grant {w1.grant} (token {w1.token}) had written: two holders interleaved"
                )
    # CheckFence: no two holders confirmed current at the same instant.
    confirmed = sorted(
        (g for g in held if g.fence_current and g.fence_ret_us is not None),
        key=lambda g: g.fence_call_us or 0,
    )
    for a in confirmed:
        for b in confirmed:
            if (
                b.id != a.id
                and (b.acquire_ret_us or 0) < (a.fence_call_us or 0)
                and (a.fence_ret_us or 0) < (b.fence_call_us or 0)
            ):
                report.fail(
                    f"grants {a.id} (token {a.token}) and {b.id} (token {b.token}) both held the "
                    f"lock when {a.id}'s fence check ran: {b.id} was granted before it and still "
                    "held the lock at its own later check"
                )
    # Overlaps in real time that CheckFence did not confirm (a lease may have expired):
    # reported, not failed.
    never = 1 << 62
    overlaps = 0
    for a, b in itertools.combinations(held, 2):
        granted_by = max(a.acquire_ret_us or 0, b.acquire_ret_us or 0)
        ends = min(
            never if a.end_call_us is None else a.end_call_us,
            never if b.end_call_us is None else b.end_call_us,
        )
        if granted_by < ends:
            overlaps += 1
    report.details = {
        "grants": len(held),
        "attempts": len(grants),
        "fence_current": sum(1 for g in held if g.fence_current),
        "fence_not_current": sum(1 for g in held if g.fence_current is False),
        "resource_writes_accepted": len(accepted),
        "resource_writes_refused": sum(1 for w in writes if not w.accepted),
        "unconfirmed_realtime_overlaps": overlaps,
        "stalled_sections": sum(1 for g in held if g.stalled),
        "stalled_and_fenced_off": sum(
            1 for g in held if g.stalled and g.fence_current is False and g.writes_refused
        ),
        "max_token": max((g.token for g in held), default=0),
    }
    return report
