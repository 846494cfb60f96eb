"""The member's command line: `build_parser`, and `config_from_args` into a `MemberConfig`.

Every check that can be made before the process locks, listens or writes anything is made
here, so a bad command line exits with status 2 and changes nothing: flag combinations, the
addresses, the join token, and a data dir that records another cluster id (`CLUSTER_ID`) or
that already belongs to a cluster when `--join` is given.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.pki import JoinToken, JoinTokenError
from coordinator.runtime.addresses import (
    ConfigError,
    dial_address,
    parse_initial_cluster,
    split_host_port,
)
from coordinator.runtime.eventloop import DEFAULT_EVENT_LOOP, EVENT_LOOPS
from coordinator.runtime.peer_transport import DEFAULT_TRANSPORT, TRANSPORT_KINDS, TransportKind
from coordinator.storage import StorageError, read_cluster_id
from coordinator.storage.crypto import FORMAT_FILE
from coordinator.storage.wal import WAL_DIR

from .join import JoinError, JoinRecord, JoinSettings, read_join_record

__all__ = [
    "ConfigError",
    "MemberConfig",
    "build_parser",
    "config_from_args",
    "parse_initial_cluster",
    "split_host_port",
    "with_port",
]


@dataclass(frozen=True, slots=True)
class MemberConfig:
    id: int
    name: str
    data_dir: Path
    client_listen: str
    peer_listen: str
    metrics_listen: str
    initial_cluster: dict[int, str]
    """id -> host:port peers dial. Bootstraps the voters of a new data dir; always used as
    the fallback address book."""
    cluster_id: str
    tls_dir: Path | None
    insecure: bool
    unlock_key_file: Path | None
    tick_ms: int = 100
    election_ticks: int = 10
    read_mode: str = "barrier"
    """"barrier" (ReadIndex, the default) or "lease" (leader-lease reads,
    `core/lease_reads.py`; every member of the cluster must be started with it)."""
    force_new_cluster: bool = False
    """Restart a survivor from its own data as a new one-member cluster (runtime/recovery.py)."""
    join: JoinSettings | None = None
    """Join a running cluster first (a new data dir; daemon/join.py)."""
    join_listen: str = ""
    """Serve the join port (concord.v1.Join) here; "" for none."""
    ca_key_file: Path | None = None
    """The cluster CA key: with it this member signs joining members' certificates."""
    advertise_peer_url: str = ""
    """The URL peers dial this member at ("" if it cannot be told from --peer-listen)."""
    advertise_client_url: str = ""
    peer_transport: TransportKind = DEFAULT_TRANSPORT
    """How Raft messages travel between members (runtime/peer_transport.py)."""
    promote: bool = False
    """A member that joined asks to become a voter once it has caught up."""
    name_given: bool = True
    """--name was given. If not, a name the member directory already lists for this id (a
    restored backup's) is kept rather than replaced by the default `member-<id>`."""
    sealing_key_renew_days: float = 30.0
    """While leading, make a new sealing key once the newest is this old; 0: on demand only."""
    workload_identity: str = "off"
    """"kubernetes": serve pods with ServiceAccount tokens on `workload_listen`
    (coordinator.server._workload), verified by TokenReview; "off": no such port."""
    workload_listen: str = ""
    token_review_kubeconfig: Path | None = None
    """The API server for TokenReviews; None: the in-cluster one."""
    token_audience: str = "concord"
    join_if_new: bool = False
    """A new data dir whose id is not in --initial-cluster starts empty and waits to be added
    as a learner (by the operator, or `concordctl member add`), instead of being refused. The
    same command line then serves a StatefulSet ordinal's first start and every later one."""
    no_bootstrap: bool = False
    """A new data dir never bootstraps, even for an id in --initial-cluster: it starts empty
    and waits to be added (disaster recovery: every member but the forced survivor)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="concord-coordinator",
        description="Run one member of a Concord cluster.",
    )
    p.add_argument(
        "--id",
        type=int,
        required=True,
        help="this member's Raft id (>= 1); 0 with --join lets the cluster pick it, and a "
        "joined member's restart reads it from its data dir",
    )
    p.add_argument("--name", help="human-readable member name (default: member-ID)")
    p.add_argument("--data-dir", type=Path, required=True, help="data directory (keys, WAL)")
    p.add_argument("--client-listen", default="127.0.0.1:7070", help="client API HOST:PORT")
    p.add_argument("--peer-listen", default="127.0.0.1:7071", help="peer (Raft) HOST:PORT")
    p.add_argument(
        "--peer-transport",
        choices=TRANSPORT_KINDS,
        default=DEFAULT_TRANSPORT,
        help="how Raft messages travel between members: frames (our own framed protocol over "
        "TLS, on the same peer port) or grpc (grpc.aio streams); every member must use the same",
    )
    p.add_argument(
        "--metrics-listen", default="127.0.0.1:7072", help="/metrics, /healthz, /readyz HOST:PORT"
    )
    p.add_argument(
        "--initial-cluster",
        help="ID=HOST:PORT,... peer addresses; a new data dir bootstraps with these voters "
        "(not with --join; a joined member's restart needs none)",
    )
    p.add_argument(
        "--cluster-id",
        help="cluster id; peers must agree on it (a joining member learns it from the cluster)",
    )
    sec = p.add_mutually_exclusive_group(required=True)
    sec.add_argument(
        "--tls-dir", type=Path, help="directory with ca.pem, member.pem, member-key.pem"
    )
    sec.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS at all: plaintext and unauthenticated; for local demos only",
    )
    p.add_argument(
        "--unlock-key-file",
        type=Path,
        help="file holding the unlock key of an autolocked data dir (e.g. a mounted secret)",
    )
    p.add_argument("--tick-ms", type=int, default=100, help="Raft tick (default 100)")
    p.add_argument(
        "--election-ticks", type=int, default=10, help="election timeout in ticks (default 10)"
    )
    p.add_argument(
        "--read-mode",
        default="barrier",
        choices=("barrier", "lease"),
        help="how the leader confirms a linearizable read: a ReadIndex round trip to a quorum "
        "(barrier, the default) or its lease, no round trip, safe while clocks run within 2%% "
        "of true rate (lease; set it on every member; docs/consensus.md)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--event-loop",
        default=DEFAULT_EVENT_LOOP,
        choices=EVENT_LOOPS,
        help="event loop to run on (default uvloop; asyncio: the standard library's; "
        "runtime/eventloop.py)",
    )
    p.add_argument(
        "--sealing-key-renew-days",
        type=float,
        default=30.0,
        help="while leading, make a new sealing key (sealed secrets) once the newest is this "
        "many days old; older keys keep unsealing; 0: renew on demand only (default 30)",
    )
    p.add_argument(
        "--force-new-cluster",
        action="store_true",
        help="disaster recovery: restart this surviving member from its own data as a new "
        "one-member cluster (see `concordctl cluster recover`); refused for a new data dir",
    )
    wi = p.add_argument_group(
        "workload identity (pods with ServiceAccount tokens; docs/identity.md)"
    )
    wi.add_argument(
        "--workload-identity",
        choices=["off", "kubernetes"],
        default="off",
        help="kubernetes: serve pods that present a projected ServiceAccount token (audience "
        "--token-audience) on --workload-listen, verified with TokenReview and scoped to "
        "k8s/<namespace>/; off (default): only client certificates, on the client port",
    )
    wi.add_argument(
        "--workload-listen",
        metavar="HOST:PORT",
        help="the workload port (TLS, no client certificate asked; a bearer token instead)",
    )
    wi.add_argument(
        "--token-review-kubeconfig",
        type=Path,
        help="kubeconfig for the API server that reviews tokens (default: in-cluster, from "
        "KUBERNETES_SERVICE_HOST/PORT and the mounted ServiceAccount token and CA)",
    )
    wi.add_argument(
        "--token-audience",
        default="concord",
        help="the audience tokens must be minted for (default concord)",
    )
    join = p.add_argument_group("joining a running cluster (daemon/join.py)")
    join.add_argument(
        "--join",
        metavar="HOST:PORT",
        help="join a running cluster through a member's join port (its --join-listen); the "
        "data dir must be new, and the certificate is written into --tls-dir",
    )
    join.add_argument(
        "--join-token",
        help="the join token (`concordctl join-token create`; env CONCORD_JOIN_TOKEN)",
    )
    join.add_argument(
        "--join-as",
        choices=["voter", "learner"],
        default="voter",
        help="become a voter once caught up (default), or stay a learner",
    )
    join.add_argument(
        "--join-timeout",
        type=float,
        default=30.0,
        help="seconds to keep retrying an unreachable join address or leader (default 30)",
    )
    join.add_argument(
        "--join-if-new",
        action="store_true",
        help="with a new data dir and an --id that --initial-cluster does not list: start with "
        "an empty log and wait to be added as a learner (`concordctl member add`, or the "
        "operator when a StatefulSet scales up) instead of refusing to start",
    )
    join.add_argument(
        "--no-bootstrap",
        action="store_true",
        help="a new data dir never bootstraps a cluster, even for an id --initial-cluster "
        "lists: it starts empty and waits to be added as a learner (disaster recovery, for "
        "every member but the survivor restarted with --force-new-cluster)",
    )
    join.add_argument(
        "--join-listen",
        metavar="HOST:PORT",
        help="serve a join port here (TLS, no client certificate) for new members to join",
    )
    join.add_argument(
        "--ca-key-file",
        type=Path,
        help="the cluster CA key (e.g. a mounted secret): this member then signs joining "
        "members' certificates",
    )
    join.add_argument(
        "--advertise-peer-url",
        help="the URL peers dial this member at (default: https://<--peer-listen>)",
    )
    join.add_argument(
        "--advertise-client-url",
        help="the URL clients dial this member at (default: https://<--client-listen>)",
    )
    return p


def config_from_args(ns: argparse.Namespace) -> MemberConfig:
    if ns.id < 0:
        raise ConfigError(f"--id must be a positive integer, got {ns.id}")
    if ns.tick_ms <= 0:
        raise ConfigError("--tick-ms must be positive")
    if ns.sealing_key_renew_days < 0:
        raise ConfigError("--sealing-key-renew-days must be 0 (on demand only) or positive")
    if ns.election_ticks < 3:
        raise ConfigError("--election-ticks must be at least 3 (heartbeats go every tick)")
    if ns.cluster_id is not None and not ns.cluster_id.strip():
        raise ConfigError("--cluster-id must not be empty")
    for flag in ("client_listen", "peer_listen", "metrics_listen"):
        split_host_port(getattr(ns, flag), "--" + flag.replace("_", "-"))
    if ns.insecure and (ns.join or ns.join_listen or ns.ca_key_file):
        raise ConfigError(
            "--join, --join-listen and --ca-key-file need TLS (--tls-dir): joining hands out "
            "certificates of the cluster CA"
        )
    if ns.join_listen:
        split_host_port(ns.join_listen, "--join-listen")
    _check_workload_flags(ns)
    scheme = "http" if ns.insecure else "https"
    peer_url = _advertised(ns.advertise_peer_url, ns.peer_listen, scheme, "peer")
    client_url = _advertised(ns.advertise_client_url, ns.client_listen, scheme, "client")
    join = _join_settings(ns)
    try:
        record = read_join_record(ns.data_dir)
    except JoinError as err:
        raise ConfigError(str(err)) from None
    common: dict[str, Any] = {
        "data_dir": ns.data_dir,
        "client_listen": ns.client_listen,
        "peer_listen": ns.peer_listen,
        "metrics_listen": ns.metrics_listen,
        "tls_dir": ns.tls_dir,
        "insecure": ns.insecure,
        "unlock_key_file": ns.unlock_key_file,
        "tick_ms": ns.tick_ms,
        "election_ticks": ns.election_ticks,
        "read_mode": ns.read_mode,
        "force_new_cluster": ns.force_new_cluster,
        "sealing_key_renew_days": ns.sealing_key_renew_days,
        "join_listen": ns.join_listen or "",
        "ca_key_file": ns.ca_key_file,
        "advertise_peer_url": peer_url,
        "advertise_client_url": client_url,
        "peer_transport": ns.peer_transport,
        "workload_identity": ns.workload_identity,
        "workload_listen": ns.workload_listen or "",
        "token_review_kubeconfig": ns.token_review_kubeconfig,
        "token_audience": ns.token_audience,
        "join_if_new": ns.join_if_new,
        "no_bootstrap": ns.no_bootstrap,
    }
    if join is not None:
        if record is not None or _initialised(ns.data_dir):
            whose = (
                f"it joined cluster {record.cluster_id!r} as member {record.member_id}"
                if record is not None
                else "it is an initialised data dir"
            )
            raise ConfigError(
                f"--join: {ns.data_dir} already belongs to a cluster ({whose}); restart the "
                "member without --join and --join-token, or give a new --data-dir"
            )
        if ns.initial_cluster:
            raise ConfigError(
                "--initial-cluster bootstraps a new cluster; a joining member gets the "
                "addresses from the cluster: drop it"
            )
        if not peer_url or not client_url:
            raise ConfigError(
                "a joining member must tell the cluster where to reach it: --peer-listen and "
                "--client-listen listen on every address, so give --advertise-peer-url and "
                "--advertise-client-url"
            )
        return MemberConfig(
            id=ns.id,
            name=ns.name or (f"member-{ns.id}" if ns.id else ""),
            initial_cluster={},
            cluster_id=(ns.cluster_id or "").strip(),
            join=join,
            **common,
        )
    if record is not None:
        return _joined_config(ns, record, common)
    if ns.id == 0:
        raise ConfigError(
            "--id must be a positive integer (0 only with --join, or to restart a member that "
            "joined over the network)"
        )
    if not ns.initial_cluster:
        raise ConfigError(
            "--initial-cluster is required to bootstrap a new cluster or to restart one of its "
            "first members; to join a running cluster give --join HOST:PORT --join-token TOKEN"
        )
    try:
        recorded = read_cluster_id(ns.data_dir)
    except StorageError as err:
        raise ConfigError(str(err)) from None
    given = ns.cluster_id.strip() if ns.cluster_id is not None else None
    if recorded is not None and given is not None and given != recorded:
        # Checked before the process locks, listens or writes anything: nothing changes.
        raise ConfigError(
            f"{ns.data_dir} belongs to cluster {recorded!r}, not --cluster-id {given!r}: a "
            "member never changes clusters. Give --cluster-id "
            f"{recorded}, or a new --data-dir to start a member of another cluster. Nothing "
            "was changed"
        )
    cluster_id = given or recorded
    if cluster_id is None:
        raise ConfigError("--cluster-id is required (or --join, to learn it from the cluster)")
    initial = parse_initial_cluster(ns.initial_cluster)
    if not ns.advertise_peer_url and ns.id in initial:
        # Peers reach a first member at its --initial-cluster address (which may be a proxy
        # or a name in front of --peer-listen): that is the peer URL it lists itself under.
        common["advertise_peer_url"] = f"{scheme}://{initial[ns.id]}"
    return MemberConfig(
        id=ns.id,
        name=ns.name or f"member-{ns.id}",
        name_given=bool(ns.name),
        initial_cluster=initial,
        cluster_id=cluster_id,
        **common,
    )


def _joined_config(
    ns: argparse.Namespace, record: JoinRecord, common: dict[str, Any]
) -> MemberConfig:
    """A restart of a member that joined over the network: its record supplies the rest."""
    if ns.id not in (0, record.member_id):
        raise ConfigError(
            f"{ns.data_dir} holds member {record.member_id} (it joined cluster "
            f"{record.cluster_id!r} as that member), not --id {ns.id}"
        )
    if ns.cluster_id is not None and ns.cluster_id.strip() != record.cluster_id:
        raise ConfigError(
            f"{ns.data_dir} belongs to cluster {record.cluster_id!r}, not --cluster-id "
            f"{ns.cluster_id.strip()!r}"
        )
    initial = (
        parse_initial_cluster(ns.initial_cluster) if ns.initial_cluster else record.dial_addresses()
    )
    return MemberConfig(
        id=record.member_id,
        name=ns.name or record.name,
        initial_cluster=initial,
        cluster_id=record.cluster_id,
        promote=record.promote,
        **common,
    )


def _check_workload_flags(ns: argparse.Namespace) -> None:
    if ns.workload_identity == "off":
        if ns.workload_listen or ns.token_review_kubeconfig:
            raise ConfigError(
                "--workload-listen and --token-review-kubeconfig are used with "
                "--workload-identity kubernetes"
            )
        return
    if not ns.workload_listen:
        raise ConfigError(
            "--workload-identity kubernetes needs --workload-listen HOST:PORT: workloads "
            "present tokens on a port of their own (the client port demands certificates)"
        )
    split_host_port(ns.workload_listen, "--workload-listen")
    if ns.insecure:
        raise ConfigError(
            "--workload-identity needs TLS (--tls-dir): a bearer token sent in plaintext is "
            "anyone's who can listen"
        )
    if not ns.token_audience.strip():
        raise ConfigError("--token-audience must not be empty")


def _join_settings(ns: argparse.Namespace) -> JoinSettings | None:
    text = ns.join_token or os.environ.get("CONCORD_JOIN_TOKEN", "")
    if not ns.join:
        if ns.join_token:
            raise ConfigError("--join-token is used with --join HOST:PORT (a member's join port)")
        return None
    split_host_port(ns.join, "--join")
    if not text.strip():
        raise ConfigError(
            "--join needs --join-token (or CONCORD_JOIN_TOKEN): get one from a running "
            "cluster with `concordctl join-token create`"
        )
    try:
        token = JoinToken.parse(text)
    except JoinTokenError as err:
        raise ConfigError(f"--join-token: {err}") from None
    if not ns.join_timeout > 0:
        raise ConfigError("--join-timeout must be positive")
    return JoinSettings(ns.join, token, ns.join_as == "learner", ns.join_timeout)


def _advertised(url: str | None, listen: str, scheme: str, what: str) -> str:
    """The URL to advertise: the flag's, else scheme://<listen> ("" for a wildcard listen)."""
    if url:
        if "://" not in url:
            raise ConfigError(f"--advertise-{what}-url {url!r} must look like scheme://host:port")
        split_host_port(dial_address(url).rstrip("/"), f"--advertise-{what}-url")
        return url
    host, port = split_host_port(listen, f"--{what}-listen")
    if host in ("", "0.0.0.0", "::"):
        return ""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _initialised(data_dir: Path) -> bool:
    return (data_dir / FORMAT_FILE).exists() or (data_dir / WAL_DIR).exists()


def with_port(url: str, port: int) -> str:
    """`url` with its port 0 replaced by `port` (the one bound), else `url` unchanged."""
    return f"{url[:-2]}:{port}" if url.endswith(":0") and port else url
