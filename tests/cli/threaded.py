"""Clusters and members on an event loop in a background thread, so that synchronous code
(click's CliRunner, which runs concordctl's own `asyncio.run`, and `SyncClient`) can talk
to them from the test's main thread.

- `ThreadedCluster`: the in-process 3-member cluster of tests/server/harness.py.
- `ThreadedMember`: one real `concord-coordinator` member (`coordinator.daemon.member.Member`,
  client API included) on loopback, insecure, with a fast tick: the thing that locks, unlocks
  and manages its keys.

Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from click.testing import CliRunner, Result

from coordinator.cli.main import cli
from coordinator.daemon.member import Member, MemberConfig
from coordinator.testing.ports import free_ports
from tests.server.harness import Cluster

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ThreadedCluster(LoopThread):
    def __init__(self, root: Path) -> None:
        super().__init__()
        try:
            self.cluster: Cluster = self.call(Cluster.start(root))
            self.call(self.cluster.register_directory())
        except BaseException:
            self.close()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{m.served.port}" for m in self.cluster.running()]

    def leader_id(self) -> int:
        async def leader() -> int:
            return (await self.cluster.leader()).id

        return self.call(leader())

    def shutdown(self) -> None:
        try:
            self.call(self.cluster.close())
        finally:
            self.close()


def free_port() -> int:
    (port,) = free_ports(1)
    return port


def member_config(data_dir: Path, **overrides: Any) -> MemberConfig:
    peer = free_port()
    fields: dict[str, Any] = {
        "id": 1,
        "name": "solo",
        "data_dir": data_dir,
        "client_listen": "127.0.0.1:0",
        "peer_listen": f"127.0.0.1:{peer}",
        "metrics_listen": "127.0.0.1:0",
        "initial_cluster": {1: f"127.0.0.1:{peer}"},
        "cluster_id": "cli-test",
        "tls_dir": None,
        "insecure": True,
        "unlock_key_file": None,
        "tick_ms": 10,
        "election_ticks": 10,
    }
    fields.update(overrides)
    return MemberConfig(**fields)


class ThreadedMember(LoopThread):
    """A member process's object, run on the background loop until `stop`."""

    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__()
        self.member = Member(cfg)
        self.task = asyncio.run_coroutine_threadsafe(self.member.run(), self.loop)
        try:
            self.wait(lambda: self.member.client_port != 0, "the client API to listen")
        except BaseException:
            self.stop()
            raise

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.member.client_port}"

    @property
    def phase(self) -> str:
        return self.member.phase

    def wait(self, cond: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if self.task.done():
                raise AssertionError(f"the member stopped ({self.task.result()}) before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what} (phase {self.phase})")
            time.sleep(0.01)  # a bounded poll of another thread's state

    def stop(self) -> int:
        try:
            self.loop.call_soon_threadsafe(self.member.request_stop, "test over")
            return int(self.task.result(20))
        finally:
            self.close()


def concordctl(endpoints: list[str] | str, *args: str, input: str | None = None) -> Result:
    """Run concordctl in-process against `endpoints` (a short overall timeout)."""
    eps = endpoints if isinstance(endpoints, str) else ",".join(endpoints)
    return CliRunner().invoke(cli, ["--endpoints", eps, "--timeout", "10", *args], input=input)
