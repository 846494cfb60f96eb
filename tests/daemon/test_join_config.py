"""`concord-coordinator`'s joining command line: the clear refusals (exit 2), and a joined
member's restart from its data dir's join record, without token or --initial-cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.daemon.config import ConfigError, MemberConfig, build_parser, config_from_args
from coordinator.daemon.join import JoinRecord, read_join_record, write_join_record
from coordinator.daemon.member import main
from coordinator.pki import create_ca, new_join_token
from coordinator.raft import ConfState
from coordinator.storage import KeyStore

TOKEN = str(new_join_token(create_ca("cfg-test").cert_pem))


def config(*args: str) -> MemberConfig:
    return config_from_args(build_parser().parse_args(list(args)))


def joiner(data_dir: Path, *extra: str) -> list[str]:
    return ["--id", "0", "--data-dir", str(data_dir), "--tls-dir", "/tmp/t", *extra]


def test_joining_needs_a_token_that_parses_and_tls(tmp_path: Path) -> None:
    new = tmp_path / "new"
    cases = [
        (joiner(new, "--join", "h:1"), "--join needs --join-token"),
        (joiner(new, "--join-token", TOKEN), "--join-token is used with --join"),
        (joiner(new, "--join", "h:1", "--join-token", "SWMTKN-1-x"), "--join-token: not a join"),
        (joiner(new, "--join", "h:1", "--join-token", TOKEN[:-2]), "damaged"),
        (joiner(new, "--join", "h", "--join-token", TOKEN), "--join 'h' must be HOST:PORT"),
        (
            joiner(new, "--join", "h:1", "--join-token", TOKEN, "--initial-cluster", "1=a:1"),
            "drop it",
        ),
        (
            joiner(new, "--join", "h:1", "--join-token", TOKEN, "--peer-listen", "0.0.0.0:7071"),
            "give --advertise-peer-url",
        ),
        (
            ["--id", "0", "--data-dir", str(new), "--insecure", "--join", "h:1"],
            "need TLS",
        ),
    ]
    for args, why in cases:
        with pytest.raises(ConfigError, match=why):
            config(*args)
    cfg = config(*joiner(new, "--join", "h:1", "--join-token", TOKEN, "--join-as", "learner"))
    assert cfg.join is not None and cfg.join.as_learner
    with pytest.raises(SystemExit) as exit_info:
        main(joiner(new, "--join", "h:1"))
    assert exit_info.value.code == 2


def test_a_data_dir_that_belongs_to_a_cluster_is_not_joined_again(tmp_path: Path) -> None:
    used = tmp_path / "used"
    KeyStore.create(used)
    with pytest.raises(ConfigError, match="already belongs to a cluster"):
        config(*joiner(used, "--join", "h:1", "--join-token", TOKEN))
    joined = tmp_path / "joined"
    record = JoinRecord("c1", 4, "four", {1: "https://a:1", 4: "https://d:4"}, None, True)
    write_join_record(joined, record)
    with pytest.raises(ConfigError, match="joined cluster 'c1' as member 4"):
        config(*joiner(joined, "--join", "h:1", "--join-token", TOKEN))


def test_a_joined_member_restarts_from_its_record(tmp_path: Path) -> None:
    data = tmp_path / "data"
    start = ConfState(frozenset({1, 2, 3}))
    record = JoinRecord("c1", 4, "four", {1: "https://a:1", 4: "https://d:4"}, start, True)
    write_join_record(data, record)
    assert read_join_record(data) == record
    assert (data / "join.json").stat().st_mode & 0o777 == 0o600

    cfg = config("--id", "0", "--data-dir", str(data), "--tls-dir", "/t")
    assert (cfg.id, cfg.name, cfg.cluster_id) == (4, "four", "c1")
    assert cfg.initial_cluster == {1: "a:1", 4: "d:4"} and cfg.promote and cfg.join is None
    same = config("--id", "4", "--data-dir", str(data), "--tls-dir", "/t", "--cluster-id", "c1")
    assert same.id == 4
    with pytest.raises(ConfigError, match="holds member 4"):
        config("--id", "5", "--data-dir", str(data), "--tls-dir", "/t")
    with pytest.raises(ConfigError, match="belongs to cluster 'c1'"):
        config("--id", "4", "--data-dir", str(data), "--tls-dir", "/t", "--cluster-id", "c2")

    (data / "join.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is damaged"):
        config("--id", "4", "--data-dir", str(data), "--tls-dir", "/t")


def test_bootstrapping_still_needs_the_initial_cluster_and_an_id(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    with pytest.raises(ConfigError, match="--id must be a positive integer"):
        config("--id", "0", "--data-dir", d, "--insecure", "--initial-cluster", "1=a:1")
    with pytest.raises(ConfigError, match="to join a running cluster give --join"):
        config("--id", "1", "--data-dir", d, "--insecure", "--cluster-id", "c")
    with pytest.raises(ConfigError, match="--cluster-id is required"):
        config("--id", "1", "--data-dir", d, "--insecure", "--initial-cluster", "1=a:1")
    with pytest.raises(ConfigError, match="need TLS"):
        config(
            "--id", "1", "--data-dir", d, "--insecure", "--initial-cluster", "1=a:1",
            "--cluster-id", "c", "--join-listen", "127.0.0.1:9",
        )  # fmt: skip


def test_join_if_new_starts_an_unlisted_id_empty_and_bootstraps_a_listed_one(
    tmp_path: Path,
) -> None:
    """The StatefulSet's one command line: an ordinal beyond --initial-cluster starts with an
    empty log and no configuration (it waits to be added as a learner); a listed one still
    bootstraps; without --join-if-new the unlisted one is refused, as before."""
    import asyncio

    from coordinator.daemon.member import Member

    initial = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"

    def open_wal(member_id: int, *extra: str) -> frozenset[int]:
        cfg = config(
            "--id", str(member_id), "--data-dir", str(tmp_path / f"m{member_id}{len(extra)}"),
            "--insecure", "--cluster-id", "c", "--initial-cluster", initial, *extra,
        )  # fmt: skip
        member = Member(cfg)
        wal = asyncio.run(member._open_storage())
        assert wal is not None
        try:
            return wal.snapshot().meta.conf.voters
        finally:
            wal.close()

    assert open_wal(4, "--join-if-new") == frozenset()
    assert open_wal(2, "--join-if-new") == frozenset({1, 2, 3})
    with pytest.raises(ConfigError, match="does not list this member"):
        open_wal(4)
    # A restart of the waiting member opens its (still empty) WAL again.
    assert open_wal(4, "--join-if-new") == frozenset()
    # Disaster recovery: even a listed id waits, never bootstrapping a second cluster.
    assert open_wal(3, "--join-if-new", "--no-bootstrap") == frozenset()
