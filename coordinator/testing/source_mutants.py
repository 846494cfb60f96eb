"""Hand-written source mutants: plausible one-line bugs, each with the fast test that kills it.

`mutants.py` breaks the Raft core by subclassing, to show the simulator's checkers bite.
This table goes further out: each entry is a bug a reviewer could plausibly let through
anywhere in the tree (a forgotten fdatasync, a field left out of the associated data, a
read served without its barrier), written as an exact text replacement in one file, with
the test node ids that must fail once it is applied. `make mutants` runs

    python -m coordinator.testing.source_mutants [--only NAME ...] [--list]

which copies the working tree into a temporary directory (the working tree itself is never
touched), checks that the killing tests pass there unmutated, then applies the mutants one
at a time, runs only their killing tests, restores the file, and prints a table. It exits
non-zero if any mutant survives, if any mutant's `old` text no longer occurs exactly once
in its file (the source moved on: update the entry, do not let the list rot), or if a
killing test cannot run. A fast test (tests/test_source_mutants.py) checks the last two
conditions on every `make test`, without running the mutants.

Adding one: append a `SourceMutant` to `MUTANTS`. Keep `old` short but unique (include the
indentation and enough context), `new` a single plausible mistake, and `kills` the fewest,
fastest tests that catch it: first check the mutant survives the rest of the suite, or it
teaches nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_TIMEOUT_S = 300.0
"""A killing test that has not finished by then counts the mutant as killed (by a hang)."""


@dataclass(frozen=True, slots=True)
class SourceMutant:
    name: str
    path: str
    """Relative to the repository root."""
    old: str
    """Exact text, which must occur exactly once in `path`."""
    new: str
    kills: tuple[str, ...]
    """pytest node ids; at least one must fail with the mutant applied."""
    why: str
    """The bug, in a sentence: what would go wrong in production."""


MUTANTS: tuple[SourceMutant, ...] = (
    SourceMutant(
        name="wal-no-fdatasync",
        path="coordinator/storage/wal.py",
        old="        started = time.perf_counter()\n        sync_data(self._fd)\n",
        new="        started = time.perf_counter()\n",
        kills=(
            "tests/storage/test_power_cut.py"
            "::test_every_record_a_save_returned_for_survives_a_power_cut",
        ),
        why="save() acknowledges records that live only in the page cache",
    ),
    SourceMutant(
        name="wal-segment-name-not-synced",
        path="coordinator/storage/_wal_files.py",
        old="    try:\n        fsync_dir(directory)\n",
        new="    try:\n",
        kills=(
            "tests/storage/test_power_cut.py"
            "::test_every_record_a_save_returned_for_survives_a_power_cut",
        ),
        why="a new segment's name is not durable: a crash loses it with every record in it",
    ),
    SourceMutant(
        name="atomic-write-rename-not-synced",
        path="coordinator/storage/_fs.py",
        old="    os.replace(tmp, path)\n    fsync_dir(path.parent)\n",
        new="    os.replace(tmp, path)\n",
        kills=(
            "tests/storage/test_power_cut.py"
            "::test_every_record_a_save_returned_for_survives_a_power_cut",
        ),
        why="a replaced key ring or snapshot reverts after a crash (the rename was not synced)",
    ),
    SourceMutant(
        name="wal-aead-without-term",
        path="coordinator/storage/_segment.py",
        old="    return _AAD_DOMAIN + _POSITION.pack(seq, offset) + head\n",
        new="    return _AAD_DOMAIN + _POSITION.pack(seq, offset) + head[:13] + head[21:]\n",
        kills=(
            "tests/storage/test_encryption.py"
            "::test_a_record_relabelled_with_another_term_fails_authentication",
        ),
        why="a record's clear term can be changed on disk without failing authentication",
    ),
    SourceMutant(
        name="loop-speaks-before-persisting",
        path="coordinator/runtime/loop.py",
        old="        rd = core.ready()\n        send_early(self.transport, rd)\n",
        new=(
            "        rd = core.ready()\n"
            "        send_early(self.transport, rd)\n"
            "        for msg in rd.late_messages:\n"
            "            self.transport.send(msg)\n"
        ),
        kills=(
            "tests/core/test_persist_order.py::test_the_production_loop_persists_before_it_speaks",
        ),
        why="a vote or an append acknowledgement leaves before the disk backs it",
    ),
    SourceMutant(
        name="core-answers-before-apply",
        path="coordinator/core/member.py",
        old="        self._pending[index] = (term, pid)\n",
        new="        self._completed.append(Completed(pid, Applied(index, term)))\n",
        kills=(
            "tests/core/test_proposals.py::test_a_proposal_is_answered_only_after_it_is_applied",
        ),
        why="a client is told of a write a new leader may still drop",
    ),
    SourceMutant(
        name="loop-retry-proposes-again",
        path="coordinator/runtime/proposals.py",
        old="            known = self._in_flight.get(session)\n",
        new="            known = None\n",
        kills=(
            "tests/runtime/test_loop.py"
            "::test_a_retry_joins_its_first_attempt_while_that_entry_is_undecided",
        ),
        why="every retry of a timed-out request adds an entry to the queue it waits in",
    ),
    SourceMutant(
        name="core-reads-without-quorum",
        path="coordinator/core/member.py",
        old="            self.node.read_index(context)\n",
        new=(
            "            commit = self.node.status().commit\n"
            "            self._reads.at(commit, rids)\n"
            "            self._serve_reads()\n"
            "            return\n"
        ),
        kills=("tests/core/test_reads.py::test_a_deposed_leader_gets_no_read_answer",),
        why="a deposed leader that still thinks it leads confirms a read barrier alone",
    ),
    SourceMutant(
        name="leader-reads-without-barrier",
        path="coordinator/server/_core.py",
        old="        if serializable:\n            return\n        while True:\n",
        new=(
            "        if serializable or self.loop.is_leader:\n"
            "            return\n"
            "        while True:\n"
        ),
        kills=(
            "tests/server/test_stale_leader.py"
            "::test_a_partitioned_old_leader_never_serves_a_stale_linearizable_read",
        ),
        why="a deposed leader that has not noticed yet serves stale linearizable reads",
    ),
    SourceMutant(
        name="renewal-outlives-lease",
        path="coordinator/client/_keepalive.py",
        old=(
            "            if kept is None or kept.expires_at < at:\n"
            "                continue  # no longer kept, or an entry of an earlier keeping"
            " of this id\n"
        ),
        new=(
            "            if kept is None or kept.expires_at < at or True:\n"
            "                continue  # no longer kept, or an entry of an earlier keeping"
            " of this id\n"
        ),
        kills=(
            "tests/client/test_holds_renewal.py"
            "::test_a_hold_is_lost_when_its_ttl_runs_out_not_when_the_client_gives_up",
        ),
        why="a holder keeps acting on a lock for the client's whole retry budget past its TTL",
    ),
    SourceMutant(
        name="transport-backoff-forgets-hello",
        path="coordinator/runtime/grpc_transport.py",
        old=(
            '        failure was being handled would otherwise be forgotten)."""\n'
            "        with contextlib.suppress(TimeoutError):\n"
        ),
        new=(
            '        failure was being handled would otherwise be forgotten)."""\n'
            "        peer.wake.clear()\n"
            "        with contextlib.suppress(TimeoutError):\n"
        ),
        kills=(
            "tests/runtime/test_grpc_transport.py"
            "::test_a_hello_that_came_while_a_failure_was_handled_cuts_the_backoff_short",
        ),
        why="a restarted peer's hello is lost and it waits out the whole backoff",
    ),
    SourceMutant(
        name="transport-shared-subchannel",
        path="coordinator/runtime/grpc_transport.py",
        old='        ("grpc.use_local_subchannel_pool", 1),\n',
        new="",
        kills=(
            "tests/runtime/test_grpc_transport.py"
            "::test_a_fresh_peer_channel_dials_afresh_right_after_a_refusal",
        ),
        why="a redial fails at once with the last refusal while gRPC's own backoff runs",
    ),
    SourceMutant(
        name="raft-vote-ignores-log",
        path="coordinator/raft/_elections.py",
        old="    return self.log.is_up_to_date(m.index, m.log_term)\n",
        new="    return True\n",
        kills=("tests/raft/test_paper.py::test_5_4_1_vote_denied_to_less_up_to_date_log",),
        why="a candidate missing committed entries can win an election (§5.4.1)",
    ),
    SourceMutant(
        name="raft-double-vote",
        path="coordinator/raft/_elections.py",
        old="        or (self.vote == NONE and self.lead == NONE)\n",
        new="        or self.lead == NONE\n",
        kills=("tests/raft/test_paper.py::test_5_2_one_vote_per_term",),
        why="a member votes for two candidates in one term: two leaders (§5.2)",
    ),
    SourceMutant(
        name="raft-commit-prior-term",
        path="coordinator/raft/_replication.py",
        old="    return self.log.term(index) == self.term\n",
        new="    return self.log.term(index) <= self.term\n",
        kills=(
            "tests/raft/test_paper.py"
            "::test_5_4_2_leader_does_not_commit_prior_term_entry_by_counting",
        ),
        why="an old-term entry is committed by counting replicas (Figure 8)",
    ),
    SourceMutant(
        name="quorum-minority",
        path="coordinator/raft/_quorum.py",
        old="    return voters // 2 + 1\n",
        new="    return (voters + 1) // 2\n",
        kills=("tests/raft/test_quorum.py::test_quorum_size",),
        why="half of an even-sized cluster counts as a quorum: two disjoint majorities",
    ),
)


# --- checks that need no test run --------------------------------------------------------------


def problems(mutants: Sequence[SourceMutant], root: Path) -> list[str]:
    """What is wrong with the table against the tree at `root` (empty: all good)."""
    out: list[str] = []
    names = [m.name for m in mutants]
    for name in sorted({n for n in names if names.count(n) > 1}):
        out.append(f"{name}: the name is used twice")
    for m in mutants:
        source = root / m.path
        if not source.is_file():
            out.append(f"{m.name}: {m.path} does not exist")
            continue
        text = source.read_text()
        count = text.count(m.old)
        if count != 1:
            out.append(
                f"{m.name}: its old text occurs {count} times in {m.path} (must be once: "
                "the source changed, update the entry)"
            )
        elif m.path.endswith(".py"):
            # A mutant that does not parse (say, new text indented for the code's old home)
            # is "killed" by the import error, whatever its test checks.
            try:
                compile(text.replace(m.old, m.new), m.path, "exec")
            except SyntaxError as e:
                out.append(
                    f"{m.name}: the mutated {m.path} does not parse: {e.msg} (line {e.lineno})"
                )
        if m.old == m.new:
            out.append(f"{m.name}: old and new are the same")
        if not m.kills:
            out.append(f"{m.name}: no killing test")
        for node in m.kills:
            file, _, test = node.partition("::")
            function = test.split("[")[0]
            test_file = root / file
            if not test_file.is_file():
                out.append(f"{m.name}: {file} does not exist")
            elif not function or f"def {function}(" not in test_file.read_text():
                out.append(f"{m.name}: {file} has no test named {function!r}")
    return out


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    mutant: SourceMutant
    verdict: str
    """killed, killed (hang), SURVIVED, or ERROR (the tests could not run: see detail)."""
    seconds: float
    detail: str = ""


def _copy_tree(root: Path, into: Path) -> Path:
    ignore = shutil.ignore_patterns(
        ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
        ".import_linter_cache", ".results", ".run", "build", "dist", "*.egg-info",
    )  # fmt: skip
    dest = into / "tree"
    shutil.copytree(root, dest, ignore=ignore, symlinks=True)
    return dest


def _pytest(tree: Path, nodes: Sequence[str]) -> tuple[int | None, str]:
    """Run the nodes in `tree`; (exit code or None on timeout, the output's tail)."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'operator'}"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *nodes]
    try:
        done = subprocess.run(
            cmd,
            check=False,
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=TEST_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return None, ""
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return done.returncode, " | ".join(tail)


def run(mutants: Sequence[SourceMutant], root: Path) -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="concord-mutants-") as tmp:
        tree = _copy_tree(root, Path(tmp))
        baseline = sorted({node for m in mutants for node in m.kills})
        print(f"baseline: {len(baseline)} killing test(s) on the unmutated copy ...", flush=True)
        code, tail = _pytest(tree, baseline)
        if code != 0:
            raise SystemExit(f"the killing tests fail without any mutant (exit {code}): {tail}")
        outcomes: list[Outcome] = []
        for m in mutants:
            source = tree / m.path
            original = source.read_text()
            started = time.perf_counter()
            if original.count(m.old) != 1:
                outcomes.append(Outcome(m, "ERROR", 0.0, "old text not found exactly once"))
                continue
            source.write_text(original.replace(m.old, m.new))
            try:
                code, tail = _pytest(tree, m.kills)
            finally:
                source.write_text(original)
            elapsed = time.perf_counter() - started
            if code is None:
                outcome = Outcome(m, "killed (hang)", elapsed, f"over {TEST_TIMEOUT_S:g} s")
            elif code == 1:
                outcome = Outcome(m, "killed", elapsed)
            elif code == 0:
                outcome = Outcome(m, "SURVIVED", elapsed, tail)
            else:  # 2: interrupted/collection error, 4: usage, 5: nothing collected
                outcome = Outcome(m, "ERROR", elapsed, f"pytest exit {code}: {tail}")
            print(f"  {m.name}: {outcome.verdict} ({elapsed:.1f} s)", flush=True)
            outcomes.append(outcome)
        return outcomes


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [("mutant", "file", "verdict", "s", "killing test")]
    for o in outcomes:
        rows.append(
            (o.mutant.name, o.mutant.path, o.verdict, f"{o.seconds:.1f}", o.mutant.kills[0])
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = [
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    ]
    for o in outcomes:
        if o.detail and o.verdict != "killed":
            out.append(f"{o.mutant.name}: {o.detail}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m coordinator.testing.source_mutants", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run just these mutants")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    mutants = list(MUTANTS)
    if args.only:
        unknown = set(args.only) - {m.name for m in mutants}
        if unknown:
            ap.error(f"no such mutant: {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:32} {m.path}: {m.why}")
        return 0
    wrong = problems(mutants, REPO_ROOT)
    if wrong:
        print("the mutant table does not match the source:", *wrong, sep="\n  ")
        return 2
    outcomes = run(mutants, REPO_ROOT)
    print(table(outcomes))
    bad = [o for o in outcomes if not o.verdict.startswith("killed")]
    print(f"{len(outcomes) - len(bad)} of {len(outcomes)} mutants killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
