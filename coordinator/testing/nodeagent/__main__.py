"""`python -m coordinator.testing.nodeagent --kubeconfig K --state-dir D [--nodes a,b,c]`:
run the node agent in the foreground until SIGINT or SIGTERM, then stop every pod process
it started (by PID) and remove its Nodes."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from ._agent import DEFAULT_NODES, NodeAgent


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m coordinator.testing.nodeagent", description=__doc__)
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="pod directories, container logs, claim volumes, the hosts file",
    )
    p.add_argument(
        "--nodes", default=",".join(DEFAULT_NODES), help="comma-separated Node names to register"
    )
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    nodes = [n for n in args.nodes.split(",") if n]
    with NodeAgent(args.kubeconfig, args.state_dir, nodes=nodes) as agent:
        logging.info("nodes %s registered; hosts file %s", ", ".join(nodes), agent.hosts_file)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
