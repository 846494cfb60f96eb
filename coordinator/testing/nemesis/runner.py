"""Run one scenario end to end, check it, and write its histories and summary.

Phases: start the cluster (behind its gates) and wait for a leader; start every workload's
clients; after a warm-up, play the scenario's episodes (apply, hold, heal, wait for a leader);
stop the clients; heal everything (links, paused and stopped members) and wait until every
member has applied what the leader committed; make the final reads; stop every process and
gate; check every history.

Bounded: the whole run sits under the scenario's hard deadline (`asyncio.timeout`), every
wait inside has its own bound, and teardown (SIGKILL, reap, close the gates) happens whatever
went wrong. A deadline, a failed wait or a crash of the runner itself is reported as the
run's `error`, with the phase it happened in, and the histories recorded so far are still
checked and written.

Output, under `<results>/<scenario>-seed<N>/`: `history.jsonl` (one operation per line,
every workload), `workloads.json` (lock grants, fenced-resource writes, final reads),
`nemesis.json` (the fault timeline), `member-<i>.log` (each member's log) and
`summary.json` (verdicts, counts, the command that reproduces the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .checks import CheckReport, check_locks, check_register, check_sequence, check_set
from .cluster import Cluster
from .faults import RECOVER_S, Fault, Timeline, make_fault
from .history import Clock
from .scenarios import Scenario
from .workloads import (
    OP_TIMEOUT_S,
    LockWorkload,
    RegisterWorkload,
    SequenceWorkload,
    SetWorkload,
    Workload,
)

WARMUP_S = 1.0


def repo_root() -> Path:
    """The checkout this package runs from (where `.results/` lives), else the cwd."""
    here = Path(__file__).resolve().parents[3]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def new_run_dir(label: str, base: Path | None = None) -> Path:
    """`.results/nemesis/<UTC timestamp>-<label>/`, created."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    root = base if base is not None else repo_root() / ".results" / "nemesis"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{stamp}-{label}"
    k = 1
    while True:
        try:
            path.mkdir()  # atomic: two processes in the same second never share a folder
        except FileExistsError:
            k += 1
            path = root / f"{stamp}-{label}-{k}"
            continue
        return path


def repro_command(name: str, seed: int) -> str:
    return f"{sys.executable} -m coordinator.testing.nemesis run --scenario {name} --seed {seed}"


@dataclass
class Outcome:
    """What one run found; `summary()` is what summary.json holds."""

    scenario: str
    seed: int
    members: int
    episodes: list[list[str]]
    out_dir: Path
    seconds: float = 0.0
    error: str = ""
    phase: str = ""
    checks: list[CheckReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Findings outside the workloads' checks (a member that exited on its own, ...)."""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error and not self.problems and all(c.ok is True for c in self.checks)

    @property
    def ops_checked(self) -> int:
        return sum(c.ops for c in self.checks)

    def failure_message(self) -> str:
        lines = [f"nemesis scenario {self.scenario!r} seed {self.seed} FAILED"]
        if self.error:
            lines.append(f"  error (phase {self.phase}): {self.error}")
        lines += [f"  {p}" for p in self.problems]
        for c in self.checks:
            if c.ok is not True:
                verdict = "inconclusive" if c.ok is None else "VIOLATION"
                lines.append(f"  {c.workload}: {verdict}")
                lines += ["    " + line for p in c.problems for line in p.splitlines()]
        lines.append(f"  reproduce: {repro_command(self.scenario, self.seed)}")
        lines.append(f"  histories and logs: {self.out_dir}")
        return "\n".join(lines)

    def summary(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "members": self.members,
            "episodes": self.episodes,
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "ops_checked": self.ops_checked,
            "error": self.error,
            "phase": self.phase,
            "problems": self.problems,
            "checks": [c.to_json() for c in self.checks],
            "repro": repro_command(self.scenario, self.seed),
            "out_dir": str(self.out_dir),
            **self.extra,
        }


class _Run:
    """The state of one run (see the module docstring)."""

    def __init__(self, scenario: Scenario, seed: int, out_dir: Path) -> None:
        self.scenario = scenario
        self.seed = seed
        self.out_dir = out_dir
        self.clock = Clock()
        self.rng = random.Random(f"nemesis/{scenario.name}/{seed}")
        self.timeline = Timeline(self.clock)
        self.register = RegisterWorkload(self.clock, seed)
        self.sequence = SequenceWorkload(self.clock, seed)
        self.set = SetWorkload(self.clock, seed)
        self.locks = LockWorkload(self.clock, seed)
        self.workloads: list[Workload] = [self.register, self.sequence, self.set, self.locks]
        self.outcome = Outcome(
            scenario.name,
            seed,
            scenario.members,
            [list(e) for e in scenario.episodes],
            out_dir,
        )
        self.phase = "start"
        self.expected_exits: Counter[int] = Counter()
        """Member id -> exits a fault may have caused (one per disk-full): not findings."""

    async def play(self, cluster: Cluster) -> None:
        sc = self.scenario
        self.phase = "start"
        await cluster.wait_ready(timeout_s=30.0)
        await cluster.leader(20.0)
        self.phase = "setup"
        for w in self.workloads:
            await w.setup(cluster)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(w.worker(i, cluster, stop), name=f"{w.name}-{i}")
            for w in self.workloads
            for i in range(w.clients)
        ]
        try:
            self.phase = "warm-up"
            await asyncio.sleep(WARMUP_S)
            for n, episode in enumerate(sc.episodes, 1):
                await self.episode(cluster, n, episode, tasks)
            self.phase = "stop clients"
            stop.set()
            async with asyncio.timeout(2 * OP_TIMEOUT_S + 5):
                await asyncio.gather(*tasks)
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.phase = "final heal"
        await self.heal_all(cluster)
        self.phase = "final reads"
        for w in self.workloads:
            await w.final_read(cluster)

    async def episode(
        self, cluster: Cluster, n: int, kinds: Sequence[str], tasks: Sequence[asyncio.Task[None]]
    ) -> None:
        faults: list[Fault] = []
        for kind in kinds:
            self.phase = f"episode {n}: apply {kind}"
            fault = make_fault(kind, self.rng)
            faults.append(fault)
            await fault.apply(cluster)
            self.timeline.note(fault, "apply")
            if kind == "disk-full":
                self.expected_exits.update(fault.targets)  # one exit each
        self.phase = f"episode {n}: hold"
        await asyncio.sleep(self.rng.uniform(*self.scenario.hold_s))
        for fault in reversed(faults):
            self.phase = f"episode {n}: heal {fault.kind}"
            await fault.heal(cluster)
        for fault in reversed(faults):
            self.phase = f"episode {n}: settle after {fault.kind}"
            await fault.settle(cluster)
            self.timeline.note(fault, "heal")
            self.outcome.problems += [f"episode {n} ({fault.kind}): {p}" for p in fault.problems]
        self.phase = f"episode {n}: recover"
        await cluster.leader(RECOVER_S)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise RuntimeError(f"client task {t.get_name()} failed") from t.exception()
        await asyncio.sleep(self.rng.uniform(0.3, 1.0))

    async def heal_all(self, cluster: Cluster) -> None:
        cluster.network.heal()
        for m in cluster.members.values():
            if m.paused:
                cluster.resume(m.id)
            if m.id in cluster.voters and not m.running():
                cluster.start(m.id)
        await cluster.wait_ready(timeout_s=RECOVER_S)
        await cluster.wait_converged(RECOVER_S)

    def check(self, cluster: Cluster) -> None:
        o = self.outcome
        o.checks = [
            check_register(self.register.recorder.ops),
            check_sequence(self.sequence.recorder.ops, self.sequence.clients),
            check_set(self.set.recorder.ops, self.set.final_leader, self.set.final_members),
            check_locks(self.locks.recorder.ops, self.locks.grants, self.locks.resource.writes),
        ]
        for c in o.checks:
            if c.counts.get("ok", 0) == 0 and not o.error:
                o.problems.append(f"{c.workload}: no operation succeeded during the whole run")
        for m in cluster.members.values():
            if len(m.exits) > self.expected_exits[m.id]:
                o.problems.append(
                    f"member {m.id} exited on its own (statuses {m.exits}, "
                    f"{self.expected_exits[m.id]} expected from a full disk); "
                    f"see member-{m.id}.log"
                )
            log = m.log()
            for needle in ("WalCorruptError", "is corrupt", "this is a bug"):
                if needle in log:
                    o.problems.append(f"member {m.id}'s log says {needle!r}")
        o.extra["faults"] = [asdict(e) for e in self.timeline.events]
        o.extra["gates"] = {str(k): asdict(v) for k, v in cluster.network.stats().items()}

    def write(self, cluster: Cluster) -> None:
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        with (out / "history.jsonl").open("w") as f:
            for w in self.workloads:
                for op in w.recorder.ops:
                    f.write(json.dumps(op.to_json(), default=str) + "\n")
        workloads = {w.name: w.to_json() for w in self.workloads}
        (out / "workloads.json").write_text(json.dumps(workloads, indent=1, default=str))
        events = [asdict(e) for e in self.timeline.events]
        (out / "nemesis.json").write_text(json.dumps(events, indent=1, default=str))
        for m in cluster.members.values():
            with contextlib.suppress(OSError):
                shutil.copyfile(m.log_path, out / f"member-{m.id}.log")
        (out / "summary.json").write_text(json.dumps(self.outcome.summary(), indent=1, default=str))


async def run_scenario(scenario: Scenario, seed: int, results: Path) -> Outcome:
    """Run `scenario` with `seed`; write everything under `results/<name>-seed<seed>/`."""
    out_dir = results / f"{scenario.name}-seed{seed}"
    run = _Run(scenario, seed, out_dir)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"concord-nemesis-{scenario.name}-"))
    cluster = Cluster(tmp, scenario.members)
    try:
        deadline = asyncio.timeout(scenario.deadline_s)
        try:
            async with deadline:
                await cluster.open()
                await run.play(cluster)
        except TimeoutError as err:
            run.outcome.error = (
                f"the scenario's hard deadline ({scenario.deadline_s:.0f} s) passed: a hang"
                if deadline.expired()
                else f"TimeoutError: {err}"
            )
        except Exception as err:  # reported with the phase; the histories are still checked
            run.outcome.error = f"{type(err).__name__}: {err}"
        run.outcome.phase = run.phase if run.outcome.error else ""
        cluster.note_exits()
    finally:
        await cluster.aclose()
        run.outcome.seconds = time.perf_counter() - started
        run.check(cluster)
        run.write(cluster)
        shutil.rmtree(tmp, ignore_errors=True)
    return run.outcome


def append_run_summary(run_dir: Path, outcome: Outcome) -> None:
    """Add one scenario's line to the run's `summary.json` (a list, one entry per run)."""
    path = run_dir / "summary.json"
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = []
    entries.append(
        {
            "scenario": outcome.scenario,
            "seed": outcome.seed,
            "members": outcome.members,
            "episodes": outcome.episodes,
            "ok": outcome.ok,
            "ops_checked": outcome.ops_checked,
            "seconds": round(outcome.seconds, 1),
            "error": outcome.error,
            "repro": repro_command(outcome.scenario, outcome.seed),
            "dir": str(outcome.out_dir.relative_to(run_dir)),
            **{k: v for k, v in outcome.extra.items() if k == "quorum_table"},
        }
    )
    path.write_text(json.dumps(entries, indent=1, default=str))
