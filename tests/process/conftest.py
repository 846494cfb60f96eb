"""Fixtures for the process tests: clusters that are always torn down, with their members'
logs printed when a test fails."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from coordinator.testing.process_cluster import MakeCluster, ProcessCluster

_REPORT_KEY = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_REPORT_KEY] = report
    return report


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeCluster]:
    """`make_cluster(size=3, **options)` starts a TLS cluster (not yet waited for); every
    cluster made is killed at teardown, whatever happened."""
    made: list[ProcessCluster] = []

    def make(size: int = 3, **options: object) -> ProcessCluster:
        cluster = ProcessCluster(tmp_path / f"cluster-{len(made)}", size, **options)  # type: ignore[arg-type]
        made.append(cluster)
        cluster.start_all()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()
        report = request.node.stash.get(_REPORT_KEY, None)
        if report is not None and report.failed:
            for cluster in made:
                print(f"member logs of {cluster.root}:{cluster.log_tails(chars=6000)}")


@pytest.fixture
def cluster(make_cluster: MakeCluster) -> ProcessCluster:
    """Three members with mutual TLS, started (wait for them with `wait_ready`)."""
    return make_cluster(3)
