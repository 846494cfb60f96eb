"""Linearizability checking for client histories recorded by the simulator.

A history is a set of operations, each with an invocation time and a response time (virtual
microseconds). It is *linearizable* if we can give every operation a single instant between
its invocation and its response so that, taken in that order, the operations are a legal run
of a sequential specification (a `Model`). That is the correctness condition Concord promises
clients, so it is the property the simulator checks for every seed.

Mechanism
---------
1. **P-compositionality** (Herlihy & Wing; used by Porcupine). Linearizability is local: a
   history is linearizable iff each per-object sub-history is. `Model.partition` splits the
   history (the KV model splits by key), and we check each part on its own. A few hundred ops
   per key are cheap to search; the same ops as one history would not be.
2. **Wing & Gong search** (1993) over the partition's events. Calls and returns are sorted by
   time in a doubly linked list. The operations that may be linearized next are exactly the
   calls that come before the first remaining return. We linearize one (if the model accepts
   its output), unlink its call and return, and start again from the head. When we reach a
   return instead, the op it belongs to cannot be placed, so we undo the last choice and try
   the next candidate. Unlinking and relinking are O(1) (dancing links), so each search step
   costs one model step.
3. **Memoization** (Lowe 2017, "Testing for linearizability"). Two search nodes with the same
   set of linearized ops and the same model state have the same future, so a node is explored
   once. The set is an int bitmask; the state must be hashable.
4. **Reads go first and alone** (a partial-order reduction of our own). If the model
   implements the optional `ReadOnlyHint` (KvModel does), a read-only candidate that is legal
   now is placed at once, and the node tries nothing else. Moving a read earlier, to a point
   where it is already legal, keeps real-time order (it is a candidate, so nothing remaining
   had to precede it) and changes no state that other ops see. So some linearization starts
   with it if any does. Concurrent reads then cost one path instead of a choice of orders. On
   one key with 10 clients, this cut the steps 20 to 150 times.
5. **Operations whose outcome is unknown** (`ret_us is None`; the client timed out or crashed)
   return at +infinity, so they never block anything: they may take effect at any point after
   their call, or never. We keep them out of the event list.
   - A partition succeeds as soon as every op with a *known* outcome is linearized. Any
     unknown op left over is taken as never having happened, so a model never has to accept
     one in the final state. Unknown read-only ops are dropped outright.
   - At each node the search tries the known candidates first. It tries unknown ops only when
     those are exhausted, so an unknown op takes effect only when a dead end needs it.
   - The memo uses *subsumption*: it is keyed by (known ops linearized, state) and keeps the
     minimal sets of unknown ops seen for that key. Node (K, U, s) is dominated by an explored
     (K, U', s) with U' a subset of U, because whatever completes the first also completes
     the second (the ops in U - U' are optional and block nothing).
   - *Useless unknown ops are cut.* Say an unknown op u was just placed at node P, and the
     next op x would have had the same effect at P (for example x is a put, which overwrites
     u). Then P+x dominates P+u+x. P has already tried, or will try, x among its own
     candidates, so x is skipped after u. An unknown op therefore survives only if the very
     next op observes it.
   Without the last two, k concurrent unknown writes to a register cost up to 2**k nodes. In
   one measured stress case (20 unknown puts, then 100 ordinary ops and one impossible read),
   they cut the cost from over 3M steps (gave up) to 42k. Knossos and Porcupine are known to
   slow down on many indeterminate ops.
6. **Budget**. More than `max_states` model steps in one partition gives that partition the
   verdict "gave up" (`ok=None`), never an exception. A definite failure in another partition
   still wins.

Why no linearization is lost: every move we skip leads to a node dominated by one the search
visits. That node is either already explored, or it is reachable from an ancestor still on
the stack. A dominator never needs more steps to complete than the node it dominates. Suppose
a failed search had visited a node from which a linearization exists. Take the one closest to
completion. Its first move on a shortest completion was tried, or it led to a dominated node.
Either way the search visited a node closer to completion, which contradicts the choice. The
tests back this up with a brute-force twin on thousands of random histories.

Real-time order and ties: op A must precede op B iff `A.ret_us < B.call_us`. Equal timestamps
count as concurrent (calls sort before returns at the same instant). A checker must never
report a false failure, so ties are read permissively. A simulator that means "A returned,
then B was called" should give B a strictly later time.

Determinism: ops are ordered by (call_us, client_id, position in the input). Set and dict
hashing decide only membership, never the search order. So verdicts, counts and explanations
do not depend on PYTHONHASHSEED.

A failed check explains itself. It shows the linearizable prefix found that placed the most
known-outcome ops, the model state after it, and each op that could have come next with the
reason it could not.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar, runtime_checkable

__all__ = [
    "UNKNOWN",
    "CheckResult",
    "Model",
    "Operation",
    "ReadOnlyHint",
    "Unknown",
    "check",
]


class Unknown(enum.Enum):
    """The type of `UNKNOWN`: a one-member enum, so it is a true singleton that survives copy
    and pickle, and `out is UNKNOWN` narrows types under mypy."""

    UNKNOWN = "UNKNOWN"

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = Unknown.UNKNOWN
"""The output of an operation whose client never learned the outcome."""

S = TypeVar("S", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - the conventional name for a model's input type
O = TypeVar("O")  # noqa: E741 - the conventional name for a model's output type
I_contra = TypeVar("I_contra", contravariant=True)
O_contra = TypeVar("O_contra", contravariant=True)


@dataclass(frozen=True, slots=True)
class Operation(Generic[I, O]):
    """One client operation as the client saw it.

    Invariants: `out is UNKNOWN` iff `ret_us is None`; `call_us <= ret_us`.
    """

    client_id: int
    inp: I
    call_us: int  # virtual time of invocation
    ret_us: int | None  # virtual time of the response; None = never returned (= +infinity)
    out: O | Unknown  # UNKNOWN iff ret_us is None

    def __post_init__(self) -> None:
        if (self.ret_us is None) != (self.out is UNKNOWN):
            raise ValueError(f"out must be UNKNOWN iff ret_us is None: {self!r}")
        if self.ret_us is not None and self.ret_us < self.call_us:
            raise ValueError(f"operation returns before it is called: {self!r}")


class Model(Protocol[S, I, O]):
    """A sequential specification: what one object does when operations run one at a time.

    Contract:
    - `step` is pure and deterministic. It returns whether `out` is a legal output of `inp` in
      `state`, and the next state (ignored when illegal). The state must be hashable and
      immutable, since the memo stores it.
    - `step` with `out=UNKNOWN` means the op took effect here but nobody saw the output. It
      should normally be legal and return the effect. The checker itself covers "never took
      effect" (it need not place the op at all), so `step` should not model that case.
    - `partition` splits a history into independent sub-histories: ones that share no
      object, so checking each separately is equivalent to checking the whole. Its parts
      together hold every op exactly once. `[ops]` is always a correct answer.
    - `describe` renders one op for humans, for failure explanations.
    """

    def init(self) -> S: ...

    def step(self, state: S, inp: I, out: O | Unknown) -> tuple[bool, S]: ...

    def partition(self, ops: Sequence[Operation[I, O]]) -> Sequence[Sequence[Operation[I, O]]]: ...

    def describe(self, inp: I, out: O | Unknown) -> str: ...


@runtime_checkable
class ReadOnlyHint(Protocol[I_contra, O_contra]):
    """An optional extra a `Model` may implement to speed up the search.

    Contract: `read_only(inp, out)` may return True only if, in every state where `step`
    accepts (inp, out), it leaves the state unchanged (a get, or a cas that reported failure).
    False is always safe. The checker places a legal read-only op as soon as it becomes a
    candidate and tries nothing else at that node. Moving a read earlier, to a point where it
    is already legal, keeps real-time order and changes no state seen by any other op, so
    this loses no linearization. Read-only ops with an UNKNOWN outcome are ignored.
    """

    def read_only(self, inp: I_contra, out: O_contra | Unknown) -> bool: ...


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict on a whole history.

    `ok` is True if every partition is linearizable, and False if some partition is not (the
    first such partition is reported, and later ones are not searched). It is None if no
    partition failed but at least one ran out of budget (the first of those is reported).
    """

    ok: bool | None  # True linearizable, False not, None gave up (budget exhausted)
    ops_checked: int  # == len(ops)
    partitions: int  # number of independent sub-histories
    states_explored: int  # model steps taken, summed over partitions
    # The reported partition, sorted by (call_us, client_id); None iff ok is True.
    failing_partition: tuple[Operation[Any, Any], ...] | None
    explanation: str  # human-readable; for failures, names the ops involved


# How many linearized ops of the prefix, and how many candidates, an explanation shows.
_PREFIX_SHOWN_MAX: Final = 20
_CANDIDATES_SHOWN_MAX: Final = 20


def check(
    model: Model[S, I, O],
    ops: Sequence[Operation[I, O]],
    *,
    max_states: int = 2_000_000,
) -> CheckResult:
    """Decide whether `ops` is linearizable with respect to `model`.

    `max_states` bounds the model steps spent on each partition. A partition that needs more
    gets the verdict "gave up" (ok=None) instead of an answer.
    """
    if max_states < 0:
        raise ValueError(f"max_states must be >= 0, got {max_states}")
    parts = [list(part) for part in model.partition(ops)]
    if sum(len(part) for part in parts) != len(ops):
        raise ValueError("Model.partition must return every operation exactly once")

    states_total = 0
    failed: tuple[int, _Outcome[S, I, O]] | None = None
    gave_up: tuple[int, _Outcome[S, I, O]] | None = None
    for index, part in enumerate(parts):
        outcome = _search(model, part, max_states)
        states_total += outcome.steps
        if outcome.ok is False:
            failed = (index, outcome)
            break
        if outcome.ok is None and gave_up is None:
            gave_up = (index, outcome)

    reported = failed if failed is not None else gave_up
    if reported is None:
        return CheckResult(
            ok=True,
            ops_checked=len(ops),
            partitions=len(parts),
            states_explored=states_total,
            failing_partition=None,
            explanation=(
                f"linearizable: {len(ops)} ops in {len(parts)} partitions, "
                f"{states_total} model steps"
            ),
        )
    index, outcome = reported
    return CheckResult(
        ok=outcome.ok,
        ops_checked=len(ops),
        partitions=len(parts),
        states_explored=states_total,
        failing_partition=tuple(outcome.ops),
        explanation=_explain(model, outcome, index, len(parts), max_states),
    )


@dataclass(frozen=True, slots=True)
class _Outcome(Generic[S, I, O]):
    """The result of searching one partition."""

    ok: bool | None
    steps: int  # model steps taken
    ops: Sequence[Operation[I, O]]  # the partition, sorted by (call_us, client_id, position)
    # Indices into `ops`: the linearized prefix that placed the most known-outcome ops.
    best_prefix: Sequence[int]


# Search phases at one node: legal read-only candidates are taken first and alone (see the
# module docstring), then the other known candidates, then unknown-outcome ones.
_READS: Final = 0
_WRITES: Final = 1
_UNKNOWN: Final = 2
_BACKTRACK: Final = 3
# Frame kinds: how the op on the stack was placed.
_CHOSEN: Final = 0  # a known op, one choice among the node's candidates
_FORCED: Final = 1  # a legal read-only op, the node's only move
# (_UNKNOWN, 2, doubles as the frame kind of unknown-outcome ops.)


def _search(
    model: Model[S, I, O], part: Sequence[Operation[I, O]], max_steps: int
) -> _Outcome[S, I, O]:
    """Wing & Gong search with subsumption memo over one partition (see module docstring)."""
    order = sorted(range(len(part)), key=lambda i: (part[i].call_us, part[i].client_id, i))
    ops = [part[i] for i in order]
    n = len(ops)
    inputs = [op.inp for op in ops]
    outputs = [op.out for op in ops]
    bits = [1 << i for i in range(n)]
    ranks = _event_ranks(ops)

    # Known-outcome ops: a doubly linked list of call and return events in time order.
    # Node 0 is the head sentinel and node `tail` the tail sentinel.
    known_events = sorted(
        [(ranks.call[i], i, True) for i in range(n) if ops[i].ret_us is not None]
        + [(ranks.ret[i], i, False) for i in range(n) if ops[i].ret_us is not None]
    )
    tail = len(known_events) + 1
    nxt = [*range(1, tail + 1), tail]
    prv = [0, *range(tail)]
    node_op = [-1] * (tail + 1)
    node_is_call = [False] * (tail + 1)
    node_rank = [0] * (tail + 1)
    call_node_of = [0] * n
    for node, (rank, op, is_call) in enumerate(known_events, start=1):
        node_op[node] = op
        node_is_call[node] = is_call
        node_rank[node] = rank
        if is_call:
            call_node_of[op] = node
    ret_node = [0] * (tail + 1)  # for each call node, its return node
    for node, (_, op, is_call) in enumerate(known_events, start=1):
        if not is_call:
            ret_node[call_node_of[op]] = node

    read_only = [False] * n
    if isinstance(model, ReadOnlyHint):
        read_only = [model.read_only(inputs[i], outputs[i]) for i in range(n)]

    # Unknown-outcome ops: a second linked list of their calls in time order. A read-only one
    # can change nothing, so it can always be taken as never having happened: leave it out.
    unknown_ops = [i for i in range(n) if ops[i].ret_us is None and not read_only[i]]
    known_remaining = sum(1 for op in ops if op.ret_us is not None)
    utail = len(unknown_ops) + 1
    unxt = [*range(1, utail + 1), utail]
    uprv = [0, *range(utail)]
    uop = [-1, *unknown_ops, -1]
    urank = [0, *(ranks.call[i] for i in unknown_ops), ranks.never]

    step = model.step
    memo: dict[tuple[int, S], list[int]] = {}
    state = model.init()
    known_mask = 0
    unknown_mask = 0
    # A frame: (node placed, state before it, frame kind, limit rank for _UNKNOWN frames).
    stack: list[tuple[int, S, int, int]] = []
    linearized: list[int] = []  # the ops placed, in order; parallel to `stack`
    # The prefix that placed the most known ops, for the explanation. Unknown ops placed at
    # a dead end are not progress, so they do not count.
    best: list[int] = []
    best_remaining = known_remaining
    steps = 0

    def dominated(kmask: int, umask: int, new_state: S) -> bool:
        """Record (kmask, umask, new_state) as explored, unless an explored node dominates it."""
        key = (kmask, new_state)
        seen = memo.get(key)
        if seen is None:
            memo[key] = [umask]
            return False
        for other in seen:
            if other & ~umask == 0:
                return True
        seen[:] = [other for other in seen if umask & ~other != 0]
        seen.append(umask)
        return False

    def redundant_after_unknown(op: int, new_state: S) -> bool:
        """The last op placed was an unknown-outcome op u, at node P. Would `op` have had the
        same effect at P? Then P+op dominates P+u+op, and P's own scan reaches P+op: it has
        tried (or will try) all its known and unknown candidates. So u was useless here."""
        legal_at_parent, state_at_parent = step(stack[-1][1], inputs[op], outputs[op])
        return legal_at_parent and state_at_parent == new_state

    if known_remaining == 0:
        return _Outcome(ok=True, steps=0, ops=ops, best_prefix=[])

    phase = _READS
    node = nxt[0]  # cursor in the known list, in phases _READS and _WRITES
    unode = 0  # cursor in the unknown list, in phase _UNKNOWN
    limit = 0  # rank of the first remaining return, in phase _UNKNOWN
    while True:
        if phase <= _WRITES and node_is_call[node]:
            op = node_op[node]
            if read_only[op] != (phase == _READS):
                node = nxt[node]
                continue
            steps += 1
            if steps > max_steps:
                return _Outcome(ok=None, steps=steps - 1, ops=ops, best_prefix=best)
            legal, new_state = step(state, inputs[op], outputs[op])
            if legal and phase == _WRITES and stack and stack[-1][2] == _UNKNOWN:
                steps += 1
                legal = not redundant_after_unknown(op, new_state)
            if not legal:
                node = nxt[node]
                continue
            if dominated(known_mask | bits[op], unknown_mask, new_state):
                if phase == _READS:
                    phase = _BACKTRACK  # the forced move is explored: so is this node
                else:
                    node = nxt[node]
                continue
            stack.append((node, state, _FORCED if phase == _READS else _CHOSEN, 0))
            linearized.append(op)
            state = new_state
            known_mask |= bits[op]
            known_remaining -= 1
            if known_remaining < best_remaining:
                best = linearized.copy()
                best_remaining = known_remaining
            if known_remaining == 0:
                return _Outcome(ok=True, steps=steps, ops=ops, best_prefix=linearized)
            ret = ret_node[node]
            nxt[prv[node]] = nxt[node]
            prv[nxt[node]] = prv[node]
            nxt[prv[ret]] = nxt[ret]
            prv[nxt[ret]] = prv[ret]
            phase = _READS
            node = nxt[0]
            continue

        if phase == _READS:
            # No read-only candidate is legal here; now try the others, from the head.
            phase = _WRITES
            node = nxt[0]
            continue
        if phase == _WRITES:
            # `node` is the first remaining return: no known op called before it can go next.
            # Unknown ops called before it are the remaining candidates.
            phase = _UNKNOWN
            limit = node_rank[node]
            unode = unxt[0]
            continue

        if phase == _UNKNOWN and urank[unode] < limit:
            op = uop[unode]
            steps += 1
            if steps > max_steps:
                return _Outcome(ok=None, steps=steps - 1, ops=ops, best_prefix=best)
            legal, new_state = step(state, inputs[op], outputs[op])
            if legal and stack and stack[-1][2] == _UNKNOWN:
                steps += 1
                legal = not redundant_after_unknown(op, new_state)
            if legal and not dominated(known_mask, unknown_mask | bits[op], new_state):
                stack.append((unode, state, _UNKNOWN, limit))
                linearized.append(op)
                state = new_state
                unknown_mask |= bits[op]
                unxt[uprv[unode]] = unxt[unode]
                uprv[unxt[unode]] = uprv[unode]
                phase = _READS
                node = nxt[0]
                continue
            unode = unxt[unode]
            continue

        # Every candidate at this node failed: undo the last choice and try the next one.
        if not stack:
            return _Outcome(ok=False, steps=steps, ops=ops, best_prefix=best)
        popped, state, kind, limit = stack.pop()
        op = linearized.pop()
        if kind == _UNKNOWN:
            unknown_mask ^= bits[op]
            unxt[uprv[popped]] = popped
            uprv[unxt[popped]] = popped
            phase = _UNKNOWN
            unode = unxt[popped]
            continue
        known_mask ^= bits[op]
        known_remaining += 1
        ret = ret_node[popped]
        nxt[prv[ret]] = ret
        prv[nxt[ret]] = ret
        nxt[prv[popped]] = popped
        prv[nxt[popped]] = popped
        # After a forced read the node has nothing else to try.
        phase = _BACKTRACK if kind == _FORCED else _WRITES
        node = nxt[popped]


@dataclass(frozen=True, slots=True)
class _Ranks:
    """Every event's position in the total event order (calls before returns on ties)."""

    call: Sequence[int]
    ret: Sequence[int]  # `never` for ops that never returned
    never: int  # greater than every rank: the position of +infinity


def _event_ranks(ops: Sequence[Operation[Any, Any]]) -> _Ranks:
    # The ops are already sorted by (call_us, client_id, position), so the op index breaks
    # ties deterministically. kind 0 (call) sorts before kind 1 (return) at the same instant.
    events = sorted(
        [(op.call_us, 0, i) for i, op in enumerate(ops)]
        + [(op.ret_us, 1, i) for i, op in enumerate(ops) if op.ret_us is not None]
    )
    call = [0] * len(ops)
    ret = [len(events)] * len(ops)
    for rank, (_, kind, i) in enumerate(events):
        if kind == 0:
            call[i] = rank
        else:
            ret[i] = rank
    return _Ranks(call=call, ret=ret, never=len(events))


def _explain(
    model: Model[S, I, O], outcome: _Outcome[S, I, O], index: int, parts: int, max_states: int
) -> str:
    """Render a failure (or give-up): the deepest prefix found and why nothing could follow."""
    ops = outcome.ops
    prefix = outcome.best_prefix
    known = sum(1 for op in ops if op.ret_us is not None)

    def show(i: int) -> str:
        op = ops[i]
        ret = "inf" if op.ret_us is None else f"{op.ret_us}us"
        return f"client {op.client_id} [{op.call_us}us, {ret}] {model.describe(op.inp, op.out)}"

    if outcome.ok is False:
        head = (
            f"not linearizable: partition {index + 1} of {parts} ({len(ops)} ops, {known} with "
            f"a known outcome) has no linearization"
        )
    else:
        head = (
            f"gave up: partition {index + 1} of {parts} ({len(ops)} ops, {known} with a known "
            f"outcome) needed more than max_states={max_states} model steps"
        )
    lines = [head, f"longest linearizable prefix found: {len(prefix)} of {len(ops)} ops"]
    hidden = max(0, len(prefix) - _PREFIX_SHOWN_MAX)
    if hidden:
        lines.append(f"  ... {hidden} earlier ops")
    lines.extend(f"  {pos + 1}. {show(i)}" for pos, i in enumerate(prefix) if pos >= hidden)

    state = model.init()
    for i in prefix:
        legal, state = model.step(state, ops[i].inp, ops[i].out)
        if not legal:  # the search only records legal prefixes
            raise AssertionError(f"prefix op rejected on replay: {show(i)}")
    lines.append(f"state after the prefix: {state!r}")

    placed = set(prefix)
    if isinstance(model, ReadOnlyHint):  # the search ignored these: see _search
        placed.update(
            i for i, op in enumerate(ops) if op.ret_us is None and model.read_only(op.inp, op.out)
        )
    remaining_known = [i for i in range(len(ops)) if i not in placed and ops[i].ret_us is not None]
    ranks = _event_ranks(ops)
    first_return = min(remaining_known, key=lambda i: ranks.ret[i])
    candidates = [
        i for i in range(len(ops)) if i not in placed and ranks.call[i] < ranks.ret[first_return]
    ]
    lines.append(
        ("nothing can be placed next." if outcome.ok is False else "the search stopped here.")
        + " The candidates are the ops called before the first pending return, that of "
        + f"{show(first_return)}:"
    )
    for i in candidates[:_CANDIDATES_SHOWN_MAX]:
        legal, _ = model.step(state, ops[i].inp, ops[i].out)
        if not legal:
            why = "the model rejects this output in this state"
        elif outcome.ok is False:
            why = "legal here, but no linearization of the remaining ops follows"
        else:
            why = "legal here; search incomplete"
        lines.append(f"  - {show(i)}: {why}")
    if len(candidates) > _CANDIDATES_SHOWN_MAX:
        lines.append(f"  ... {len(candidates) - _CANDIDATES_SHOWN_MAX} more candidates")
    return "\n".join(lines)
