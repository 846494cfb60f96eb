"""Checks of what the simulator's clients saw of sequences, locks and elections, and one
invariant of the replicated state machine itself.

The history checks are sound in the sense of the nemesis checkers (`nemesis/checks.py`, which
check the same properties on real processes): a violation is reported only when no placement
of each acknowledged operation inside its [call, return] interval, and no outcome of the
unacknowledged ones, explains what the clients saw. Unacknowledged operations are simply left
out: each check below only ever uses acknowledged results and call times.

- **sequences**: every block has the count asked for; no value is issued twice (blocks are
  disjoint); each client's blocks increase; a block that returned before another was asked
  for holds smaller values (the sequence is linearizable).
- **leases**: no lease is seen gone before its safe-until (below): an acknowledged renewal
  is a promise the service keeps.
- **holds** (a lock, or leadership of an election): the fencing tokens of one name are unique
  and increase in real-time grant order; no two grants were held at the same time; and no
  grant was made under a lease that an acknowledged answer had already shown to be gone.

When is a grant *held*, by the client's own knowledge? From the acknowledgement of the acquire
that granted it until the earlier of (a) the call that gives it up (release, resign) and
(b) the lease's *safe-until*: the call time of the latest acknowledged lease grant or
keep-alive plus the TTL, minus one millisecond of rounding. (b) is sound because only the
leader's lessor ends a lease (`fsm/lessor.py`): it counts a renewal from its arrival, after
the client called, acknowledges it only after a read barrier requested after that arrival
confirmed its leadership, and a new leader gives every lease a full TTL from when it starts
serving, which a renewal it never saw acknowledged precedes. The simulator's clocks run at
rates of their own, within `CLOCK_RATE_BOUND`; the client's TTL here is true time, and the
lessor holds each lease a margin longer on its own clock, so that it lasts a TTL of true time
at any rate within the bound (rule f). Lock-delay only makes a lock last longer.

`check_leases_held` is the state invariant: after a command that can change a lock or an
election, every holder and waiter still has its lease. A lock held past its lease is exactly
what a lease is there to prevent.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from coordinator.fsm import StateMachine

from .checkers import invariant

MS = 1000
NEVER = 1 << 62


@dataclass(frozen=True, slots=True)
class Block:
    """One acknowledged `SequenceNext`."""

    client: int
    call_us: int
    ret_us: int
    asked: int
    first: int
    count: int
    increment: int

    @property
    def last(self) -> int:
        return self.first + (self.count - 1) * self.increment


@dataclass(slots=True)
class Hold:
    """One acknowledged grant of a lock, or one win of an election."""

    kind: str
    """"lock" or "elect"."""
    name: str
    client: int
    lease: int
    token: int
    call_us: int
    """The call of the acquire (or campaign) that answered granted."""
    ack_us: int
    end_call_us: int = NEVER
    """The call that gave it up (release, resign); NEVER if the client never did."""


def check_sequence(blocks: Sequence[Block]) -> str | None:
    """The first problem found in the acknowledged blocks of one sequence, or None."""
    for b in blocks:
        if b.count != b.asked or b.increment != 1:
            return f"client {b.client} asked for {b.asked} values and got {b}"
    ordered = sorted(blocks, key=lambda b: b.first)
    for a, b in itertools.pairwise(ordered):
        if b.first <= a.last:
            return f"values issued twice: {a.first}..{a.last} and {b.first}..{b.last}"
    by_client: dict[int, list[Block]] = {}
    for b in sorted(blocks, key=lambda b: b.call_us):
        by_client.setdefault(b.client, []).append(b)
    for client, mine in by_client.items():
        for a, b in itertools.pairwise(mine):
            if b.first <= a.last:
                return f"client {client} got {b.first}.. after {a.last}"
    by_ret = sorted(blocks, key=lambda b: b.ret_us)
    highest = 0
    k = 0
    for b in sorted(blocks, key=lambda b: b.call_us):
        while k < len(by_ret) and by_ret[k].ret_us < b.call_us:
            highest = max(highest, by_ret[k].last)
            k += 1
        if k and highest >= b.first:
            return (
                f"client {b.client}'s next called at {b.call_us / MS:.1f} ms got {b.first}.. "
                f"although a block up to {highest} had already returned"
            )
    return None


def check_holds(
    holds: Sequence[Hold],
    safe_until_us: Mapping[int, int],
    gone_seen_us: Mapping[int, int],
) -> str | None:
    """The first problem found in the acknowledged grants of one lock or election, or None.

    `safe_until_us`: per lease, until when it certainly lived (module docstring);
    `gone_seen_us`: per lease, when an acknowledged answer first said it no longer exists."""
    for h in holds:
        gone = gone_seen_us.get(h.lease)
        if gone is not None and gone < h.call_us:
            return (
                f"{h.kind} {h.name!r} granted to client {h.client} under lease {h.lease} at "
                f"{h.ack_us / MS:.1f} ms, although the lease was seen gone at {gone / MS:.1f} ms"
            )
    grants: dict[tuple[int, int], Hold] = {}
    for h in holds:
        grants.setdefault((h.lease, h.token), h)  # an acquire repeated by a holder: one grant
    unique = sorted(grants.values(), key=lambda h: h.ack_us)
    tokens = [h.token for h in unique]
    if len(set(tokens)) != len(tokens):
        dup = next(t for t in tokens if tokens.count(t) > 1)
        return f"{unique[0].kind} {unique[0].name!r}: token {dup} granted to two leases"
    highest = 0
    k = 0
    for h in sorted(unique, key=lambda h: h.call_us):
        while k < len(unique) and unique[k].ack_us < h.call_us:
            highest = max(highest, unique[k].token)
            k += 1
        if highest >= h.token:
            return (
                f"{h.kind} {h.name!r}: client {h.client} got token {h.token} although a grant "
                f"that had already returned got {highest}"
            )
    held_until = 0
    before: Hold | None = None
    for h in unique:
        end = min(h.end_call_us, safe_until_us.get(h.lease, 0))
        if end <= h.ack_us:
            continue  # acknowledged too late to be sure it was still held
        if before is not None and h.ack_us < held_until:
            return (
                f"{h.kind} {h.name!r} held twice at {h.ack_us / MS:.1f} ms: by client "
                f"{before.client} (lease {before.lease}, token {before.token}) until "
                f"{held_until / MS:.1f} ms and by client {h.client} (lease {h.lease}, token "
                f"{h.token})"
            )
        if end > held_until:
            held_until, before = end, h
    return None


def check_lease_lives(
    safe_until_us: Mapping[int, int], gone_seen_us: Mapping[int, int], what: str = "seen gone"
) -> str | None:
    """The first lease seen gone before its safe-until (module docstring), or None: a client
    whose renewals were acknowledged may count on its lease until the call of the latest one
    plus the TTL, across leader changes, pauses, crashes of members and clock rates.

    Also run with `gone_seen_us` the time a member first applied the lease's expiry (`what`
    "expired"): that is when its locks pass on, which must not come before the promise ends
    either, and it shows a lease that ended early even when its holder never asked again."""
    for lease, gone in sorted(gone_seen_us.items()):
        safe = safe_until_us.get(lease)
        if safe is not None and gone < safe:
            return (
                f"lease {lease} was {what} at {gone / MS:.1f} ms, although its latest "
                f"acknowledged renewal promised it until {safe / MS:.1f} ms"
            )
    return None


def check_leases_held(fsm: StateMachine, locks: Iterable[str], elections: Iterable[str]) -> None:
    """Raises `Violation` if a holder or waiter of one of these names has no lease."""
    live = set(fsm.leases())
    for name in locks:
        for lease in [h.lease for h in fsm.lock_holders(name)] + [
            w.lease for w in fsm.lock_waiters(name)
        ]:
            invariant(
                lease in live,
                f"lock {name!r} held or awaited under lease {lease}, which no longer exists",
            )
    for name in elections:
        leader = fsm.election_leader(name)
        leases = [w.lease for w in fsm.election_candidates(name)]
        if leader is not None:
            leases.append(leader.lease)
        for lease in leases:
            invariant(
                lease in live,
                f"election {name!r} led or contested under lease {lease}, which no longer exists",
            )
