"""Fault injection on real member processes, with linearizability-checked workloads.

The simulator proves the Raft core under faults it can replay; this proves the real service
(its disk, sockets, gRPC and TLS) the way Jepsen tests etcd, Consul and ZooKeeper: real
`concord-coordinator` processes on loopback, clients doing real operations, a nemesis that
kills, pauses, partitions, tears WAL tails, removes and re-adds members and fills a disk, and
checkers that read the clients' histories afterwards.

Modules, each named for what it holds:

- `gate`: the TCP gate in front of every member's peer port (partitions, one-way too);
- `cluster`: the member processes behind their gates (kill, pause, wipe, file-size limits);
- `faults`: the nemesis: each fault's apply and heal;
- `history`: timed, classified operations (ok / fail / info);
- `workloads`: CAS register, sequence, set, locks with a fenced resource;
- `checks`: the checkers (the register reuses `coordinator.testing.linearizability`);
- `scenarios`: the bounded set `make test` runs and the random schedules of `make soak`;
- `runner`: one scenario end to end, with a hard deadline, writing results;
- `quorum`: the members-down table for N = 3 and N = 5.

`python -m coordinator.testing.nemesis --help` runs them; docs/consensus.md explains what the
results mean for an operator.
"""

from .runner import Outcome as Outcome
from .runner import new_run_dir as new_run_dir
from .runner import run_scenario as run_scenario
from .scenarios import BOUNDED as BOUNDED
from .scenarios import QUORUM as QUORUM
from .scenarios import Scenario as Scenario

__all__ = ["BOUNDED", "QUORUM", "Outcome", "Scenario", "new_run_dir", "run_scenario"]
