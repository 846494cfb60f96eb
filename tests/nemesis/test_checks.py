"""The nemesis's checkers bite: hand-made histories with a known verdict each.

Pure: no process, no socket, no clock. A checker that passes every real run must still be
shown to fail the histories it exists to catch (a lost write, a value handed out twice, two
lock holders at once, a stale read), and to pass their legitimate look-alikes (an unknown
write that did take effect, a refused write that did not).
"""

from __future__ import annotations

from coordinator.testing.nemesis.checks import (
    check_locks,
    check_register,
    check_sequence,
    check_set,
)
from coordinator.testing.nemesis.history import Op, Outcome
from coordinator.testing.nemesis.workloads import Grant, ResourceWrite


def op(
    workload: str,
    process: int,
    f: str,
    args: dict[str, object],
    span: tuple[int, int | None],
    *,
    result: object = None,
    outcome: Outcome | None = None,
) -> Op:
    """`span` is (call, return) in microseconds; return None: the outcome is unknown."""
    kind: Outcome = outcome or ("info" if span[1] is None else "ok")
    return Op(workload, process, f, args, span[0], span[1], kind, result)


# --- register ----------------------------------------------------------------------------------


def reg(process: int, f: str, call: int, ret: int | None, result: object = None, **args: object):
    return op("register", process, f, {"key": "k", **args}, (call, ret), result=result)


def test_register_accepts_a_linearizable_history_with_an_unknown_write() -> None:
    history = [
        reg(0, "write", 0, 10, value="a"),
        reg(1, "write", 5, None, value="b"),  # timed out: took effect after all
        reg(0, "read", 20, 30, "b"),
        reg(2, "cas", 40, 50, True, expected="b", value="c"),
        reg(0, "read", 60, 70, "c"),
    ]
    report = check_register(history)
    assert report.ok is True, report.problems
    assert report.ops == 5 and report.counts == {"ok": 4, "fail": 0, "info": 1}


def test_register_catches_a_stale_read() -> None:
    history = [
        reg(0, "write", 0, 10, value="a"),
        reg(0, "write", 20, 30, value="b"),
        reg(1, "read", 40, 50, "a"),  # b was acknowledged before this read began
    ]
    report = check_register(history)
    assert report.ok is False
    assert "not linearizable" in report.problems[0]


def test_register_ignores_refused_ops_and_catches_a_refused_write_that_took_effect() -> None:
    refused = op("register", 1, "write", {"key": "k", "value": "x"}, (5, 8), outcome="fail")
    assert check_register([reg(0, "write", 0, 10, value="a"), refused]).ok is True
    seen = reg(0, "read", 20, 30, "x")
    assert check_register([reg(0, "write", 0, 10, value="a"), refused, seen]).ok is False


# --- sequence ----------------------------------------------------------------------------------


def nxt(process: int, call: int, ret: int | None, values: list[int] | None) -> Op:
    count = len(values) if values else 1
    return op("sequence", process, "next", {"count": count}, (call, ret), result=values)


def test_sequence_accepts_unique_increasing_values() -> None:
    history = [
        nxt(0, 0, 10, [1, 2]),
        nxt(1, 5, 15, [3]),
        nxt(0, 20, 30, [4, 5]),
        nxt(1, 21, None, None),
    ]
    report = check_sequence(history, clients=2)
    assert report.ok is True, report.problems
    assert report.details["values"] == 5


def test_sequence_catches_a_value_handed_out_twice() -> None:
    report = check_sequence([nxt(0, 0, 10, [1, 2]), nxt(1, 20, 30, [2, 3])], clients=2)
    assert report.ok is False
    assert any("returned twice" in p for p in report.problems)


def test_sequence_catches_a_value_smaller_than_one_already_returned() -> None:
    # Unique, but the second call began after the first returned 7: it must get more than 7.
    report = check_sequence([nxt(0, 0, 10, [7]), nxt(1, 20, 30, [5])], clients=2)
    assert report.ok is False
    assert any("already returned" in p for p in report.problems)


def test_sequence_catches_a_client_going_backwards() -> None:
    # Concurrent with each other (so real time allows either order), but one client's own
    # values must still increase.
    report = check_sequence([nxt(0, 0, 100, [9]), nxt(0, 50, 60, [4])], clients=1)
    assert report.ok is False
    assert any("worker 0" in p for p in report.problems)


# --- set ---------------------------------------------------------------------------------------


def add(element: str, outcome: Outcome) -> Op:
    span = (0, None if outcome == "info" else 1)
    return op("set", 0, "add", {"element": element}, span, outcome=outcome)


def test_set_accepts_every_acknowledged_add_present_and_unknowns_either_way() -> None:
    ops = [add("a", "ok"), add("b", "ok"), add("c", "info"), add("d", "info")]
    report = check_set(ops, ["a", "b", "c"], {1: ["a", "b"], 2: ["a", "b", "c"]})
    assert report.ok is True, report.problems
    assert report.details["unknown_present"] == 1 and report.details["unknown_absent"] == 1


def test_set_catches_a_lost_acknowledged_add_through_the_leader_and_on_a_member() -> None:
    ops = [add("a", "ok"), add("b", "ok")]
    assert check_set(ops, ["a"], {}).ok is False
    report = check_set(ops, ["a", "b"], {3: ["a"]})
    assert report.ok is False
    assert "member 3" in report.problems[0]


def test_set_catches_a_refused_add_that_took_effect_and_is_inconclusive_without_a_read() -> None:
    assert check_set([add("a", "fail")], ["a"], {}).ok is False
    assert check_set([add("a", "ok")], None, {}).ok is None


# --- locks -------------------------------------------------------------------------------------


def grant(gid: int, token: int, acq: tuple[int, int], fence: tuple[int, int], end: int) -> Grant:
    return Grant(
        gid,
        gid,
        acquire_call_us=acq[0],
        acquire_ret_us=acq[1],
        token=token,
        fence_call_us=fence[0],
        fence_ret_us=fence[1],
        fence_current=True,
        end_call_us=end,
        released=True,
    )


def writes(*items: tuple[int, int]) -> list[ResourceWrite]:
    """(grant, token) pairs, all accepted, at increasing times."""
    return [ResourceWrite(10 * i, token, g, True) for i, (g, token) in enumerate(items)]


def test_locks_accept_one_holder_at_a_time_with_increasing_tokens() -> None:
    grants = [grant(0, 5, (0, 10), (30, 40), 41), grant(1, 9, (5, 50), (60, 70), 71)]
    report = check_locks([], grants, writes((0, 5), (0, 5), (1, 9)))
    assert report.ok is True, report.problems
    assert report.details["unconfirmed_realtime_overlaps"] == 0


def test_locks_catch_a_token_granted_twice_and_tokens_going_backwards() -> None:
    dup = [grant(0, 5, (0, 10), (30, 40), 41), grant(1, 5, (50, 60), (70, 80), 81)]
    assert check_locks([], dup, []).ok is False
    backwards = [grant(0, 9, (0, 10), (30, 40), 41), grant(1, 5, (50, 60), (70, 80), 81)]
    report = check_locks([], backwards, [])
    assert report.ok is False
    assert any("already returned" in p for p in report.problems)


def test_locks_catch_two_holders_confirmed_current_at_once() -> None:
    # Grant 1 returned (t=20) before grant 0's fence check began (t=30), and grant 1's own
    # later check (t=60) says it still held: at t=30..40 both held the mutex.
    grants = [grant(0, 5, (0, 10), (30, 40), 41), grant(1, 9, (15, 20), (60, 70), 71)]
    report = check_locks([], grants, [])
    assert report.ok is False
    assert any("both held" in p for p in report.problems)


def test_locks_catch_interleaved_writes_at_the_fenced_resource() -> None:
    grants = [grant(0, 5, (0, 10), (30, 40), 41), grant(1, 9, (50, 60), (70, 80), 81)]
    report = check_locks([], grants, writes((0, 5), (1, 9), (0, 5)))
    assert report.ok is False
    assert any("interleaved" in p for p in report.problems)
