"""`concordctl txn`: multi-key compare-and-swap, lock-guarded writes, and clear refusals of
malformed compares and operations (exit 2, nothing sent)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.client import SyncClient
from tests.cli.threaded import ThreadedCluster, concordctl


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCluster]:
    c = ThreadedCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.shutdown()


def test_txn_swaps_two_keys_atomically_or_runs_the_else_branch(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    assert concordctl(eps, "put", "config", "v1").exit_code == 0
    res = concordctl(
        eps, "-o", "json", "txn",
        "--if", "config = v1", "--if", "version(owner) = 0",
        "--then", "put config v2", "--then", "put owner 'me too'",
        "--else", "get config",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["op"] for r in rows] == ["put", "put"] and all(r["succeeded"] for r in rows)
    assert [r["key"] for r in rows] == ["config", "owner"]

    again = concordctl(
        eps, "-o", "json", "txn", "--if", "config = v1", "--then", "put config v3",
        "--else", "get config", "--else", "get owner",
    )  # fmt: skip
    assert again.exit_code == 1  # the compare no longer holds: the else branch ran
    rows = json.loads(again.stdout)
    assert [(r["op"], r["key"], r["value"]) for r in rows] == [
        ("get", "config", "v2"),
        ("get", "owner", "me too"),
    ]
    assert not rows[0]["succeeded"]


def test_txn_guarded_by_a_lock_token(cluster: ThreadedCluster) -> None:
    eps = cluster.endpoints
    res = concordctl(eps, "-o", "json", "lease", "grant", "30s")
    lease = json.loads(res.stdout)[0]["id"]
    with SyncClient(eps) as c:
        held = c.acquire("writer", lease)
    token = held.fencing_token
    ok = concordctl(eps, "txn", "--if", f"lock(writer) = {token}", "--then", "put data 1")
    assert ok.exit_code == 0, ok.output
    stale = concordctl(eps, "txn", "--if", f"lock(writer) = {token - 1}", "--then", "put data 2")
    assert stale.exit_code == 1
    got = concordctl(eps, "-o", "json", "get", "data")
    assert json.loads(got.stdout)[0]["value"] == "1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--if", "colour(k) = 1", "--then", "get k"], "unknown field 'colour'"),
        (["--if", "version(k) = two", "--then", "get k"], "compares a number"),
        (["--if", "= v", "--then", "get k"], "is not a compare"),
        (["--if", "k = v", "--then", "put k"], "is not an operation"),
        (["--if", "k = v", "--then", "frob k"], "is not an operation"),
        (["--if", "k = v"], "at least one --then or --else"),
    ],
)
def test_txn_refuses_malformed_input_before_sending(
    cluster: ThreadedCluster, args: list[str], message: str
) -> None:
    res = concordctl(cluster.endpoints, "txn", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_lock_ttl_takes_a_duration(tmp_path: Path) -> None:
    res = concordctl(["127.0.0.1:1"], "lock", "--ttl", "500ms", "x", "--", "true")
    assert res.exit_code == 2
    assert "at least 1s" in res.output
