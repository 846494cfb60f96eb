"""`concord-coordinator`: one member process, from data directory to serving sockets.

What runs, in start-up order:

0. the data directory's lock (`coordinator.storage.DataDirLock`, an flock on `<data dir>/LOCK`
   held for the process's life): a second process on the same data dir is refused here, with
   the holder's pid, before it listens anywhere or could be unlocked. Before that, while the
   command line is read, a data dir that records another cluster id (`CLUSTER_ID`, written
   when the dir is first opened) than `--cluster-id` is refused (exit 2), nothing written;
1. the HTTP server (`--metrics-listen`): /healthz answers as soon as the process is up, so
   a locked or slow-starting member is visibly alive;
2. the data directory: the key store and the encrypted WAL (`coordinator.storage`). A new
   directory is initialised and the WAL bootstrapped with an index-0 snapshot whose
   configuration is the voters of `--initial-cluster`. With autolock on and no unlock key,
   the member is *locked*: it says so in /readyz and in its log, and waits for the key to
   appear in `--unlock-key-file` (a mounted secret) or to arrive through the client API's
   Maintenance.Unlock (`concordctl unlock`), whichever comes first. With
   `--force-new-cluster` an existing data dir is first turned into a new one-member cluster of
   this member (`recovery.py`; refused for a new dir);
3. the Raft loop (`RaftLoop`) over the WAL, the peer gRPC server and the peer transport
   (`--peer-transport`: `FrameTransport`, whose listener takes the peer port and relays gRPC
   callers to the gRPC server, or `GrpcTransport`; see `peer_transport.py`), with mutual TLS
   from `--tls-dir`, or plaintext with an explicit `--insecure`;
4. the client API (`coordinator.server.server.start_gateway`), when the build has it. It
   listens from the start, between steps 1 and 2: before the Raft loop exists it answers the
   Maintenance service (unlock, autolock status) and refuses everything else with UNAVAILABLE
   "member is locked" / "member is starting"; once the loop runs, it is attached to it and
   serves every service;
5. a level-based peer sync: every second the transport's peer set is made equal to the
   current configuration's members, addressed by the replicated member table or, failing
   that, `--initial-cluster` (a joined member: the address book it was given);
6. its own entry in the replicated member directory (`join.keep_directory_entry`): its name,
   the peer URL peers dial it at (`--advertise-peer-url`, else its `--initial-cluster`
   address) and its client URL, so that `concordctl member list` shows the first members
   too (a joined member was listed by its admission already).

Joining (`join.py`): with `--join HOST:PORT --join-token TOKEN` and a new data dir, the member
first joins through another member's join port (it gets its certificate, the cluster id, its
id and the address book), then starts as a learner from an empty WAL and asks to become a
voter once it has caught up. Every member with TLS serves the leader's half of joining on its
peer port; `--join-listen` adds a join port, and `--ca-key-file` lets it sign joiners'
certificates (the services live in `coordinator.server`, found by name like the client API).

SIGTERM or SIGINT stops it cleanly: a leader first hands leadership to its most
up-to-date follower (bounded wait), then both servers stop accepting, the loop stops, the
transport closes and the WAL is closed. Exit status: 0 after a clean stop, 1 when the member
failed (the WAL, a port, a data dir another process holds), 2 for a bad command line (or a
--cluster-id the data dir does not belong to).

Layering: this module is the composition root of a member process. It finds the client
API by name at run time (`importlib`), because `coordinator.server` sits above the runtime
and the runtime must not import it statically (see .importlinter). It hands the API itself
as the `MemberKeys` the Maintenance service acts on (`member_id`, `member_name`, `phase`,
`keys`, `unlock`): a structural protocol, so no import is needed that way either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

from coordinator.fsm import Applied, StateMachine
from coordinator.fsm import Member as DirectoryEntry
from coordinator.raft import ConfState, RaftError, Snapshot, SnapshotMeta
from coordinator.storage import (
    DataDirLock,
    DiskWal,
    InvalidUnlockKeyError,
    KeyStore,
    LockedError,
    NotInitializedError,
    StorageError,
    WrongUnlockKeyError,
    read_cluster_id,
    write_cluster_id,
)
from coordinator.storage.crypto import FORMAT_FILE
from coordinator.storage.wal import WAL_DIR

from .clock import Clock, SystemClock
from .grpc_transport import server_options
from .httpd import HttpServer, Response
from .join import (
    LOST,
    UNSURE,
    WAIT,
    JoinAsk,
    JoinError,
    JoinRecord,
    JoinSettings,
    MemberAuthority,
    first_start_verdict,
    join_cluster,
    keep_directory_entry,
    promote_when_caught_up,
    read_join_record,
    write_join_record,
)
from .join import address_book as _address_book
from .loop import LoopConfig, RaftLoop
from .metrics import MemberMetrics, MeteredLog
from .peer_transport import (
    DEFAULT_TRANSPORT,
    TRANSPORT_KINDS,
    PeerTransport,
    TransportKind,
    make_transport,
    serve_peers,
)
from .recovery import check_force_target, force_new_cluster
from .tls import (
    CertifiedKey,
    JoinToken,
    JoinTokenError,
    MemberTls,
    TlsError,
    join_server_credentials,
    load_ca_key,
    load_member_tls,
    member_channel_credentials,
    member_server_credentials,
    write_member_tls,
)
from .tokenreview import ApiServer, TokenReviewer
from .tokenreview import ConfigError as TokenReviewConfigError

log = logging.getLogger("concord.member")

PEER_SYNC_S = 1.0
UNLOCK_POLL_S = 1.0
STOP_GRACE_S = 1.0

_disable_created_metrics: Callable[[], None] = disable_created_metrics  # untyped upstream


class ConfigError(Exception):
    """A command line or configuration that cannot work; the message says why."""


# --- configuration -----------------------------------------------------------------------------


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
    force_new_cluster: bool = False
    """Restart a survivor from its own data as a new one-member cluster (runtime/recovery.py)."""
    join: JoinSettings | None = None
    """Join a running cluster first (a new data dir; runtime/join.py)."""
    join_listen: str = ""
    """Serve the join port (concord.v1.Join) here; "" for none."""
    ca_key_file: Path | None = None
    """The cluster CA key: with it this member signs joining members' certificates."""
    advertise_peer_url: str = ""
    """The URL peers dial this member at ("" if it cannot be told from --peer-listen)."""
    advertise_client_url: str = ""
    peer_transport: TransportKind = DEFAULT_TRANSPORT
    """How Raft messages travel between members (`peer_transport.py`)."""
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


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ConfigError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {text!r} must be HOST:PORT (for IPv6, [ADDR]:PORT)")
    return host.strip("[]"), int(port)


def parse_initial_cluster(text: str) -> dict[int, str]:
    """'1=host:port,2=host:port' -> {1: 'host:port', 2: 'host:port'}."""
    out: dict[int, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        ident, sep, address = item.partition("=")
        if not sep or not ident.strip().isdigit() or int(ident) <= 0:
            raise ConfigError(
                f"--initial-cluster item {item!r} must be ID=HOST:PORT with a positive ID"
            )
        split_host_port(address.strip(), f"--initial-cluster address of member {ident}")
        if int(ident) in out:
            raise ConfigError(f"--initial-cluster lists member {int(ident)} twice")
        out[int(ident)] = address.strip()
    if not out:
        raise ConfigError("--initial-cluster is empty")
    return out


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
        help="how Raft messages travel between members: grpc.aio streams, or frames (our own "
        "framed protocol over TLS, on the same peer port); every member must use the same",
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
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
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
    join = p.add_argument_group("joining a running cluster (runtime/join.py)")
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
        split_host_port(_dial_address(url).rstrip("/"), f"--advertise-{what}-url")
        return url
    host, port = split_host_port(listen, f"--{what}-listen")
    if host in ("", "0.0.0.0", "::"):
        return ""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _initialised(data_dir: Path) -> bool:
    return (data_dir / FORMAT_FILE).exists() or (data_dir / WAL_DIR).exists()


def _with_port(url: str, port: int) -> str:
    """`url` with its port 0 replaced by `port` (the one bound), else `url` unchanged."""
    return f"{url[:-2]}:{port}" if url.endswith(":0") and port else url


def _dial_address(url: str) -> str:
    """'scheme://host:port' (the member table's peer_url) or 'host:port' -> 'host:port'."""
    return url.split("://", 1)[1] if "://" in url else url


# --- the member --------------------------------------------------------------------------------


class Member:
    """One member process's parts and their lifecycle (see the module docstring)."""

    def __init__(
        self, cfg: MemberConfig, clock: Clock | None = None, *, client_api: bool = True
    ) -> None:
        self.cfg = cfg
        self.client_api = client_api
        """Serve the client API when the build has it (off: peers and metrics only)."""
        self.clock = clock or SystemClock()
        self.metrics = MemberMetrics()
        self.phase = "starting"
        """starting -> (locked ->) running -> stopping; what /readyz explains."""
        self.loop: RaftLoop | None = None
        self.transport: PeerTransport | None = None
        self.start_commit = 0
        """The commit index the WAL held at start: ready once applied up to it."""
        self.http_port = 0
        self.peer_port = 0
        self.client_port = 0
        self.workload_port = 0
        """The workload port actually bound (0: none)."""
        self.join_port = 0
        self._tls: MemberTls | None = None
        self._signing_ca: CertifiedKey | None = None
        """The cluster CA with its key (--ca-key-file), for signing joiners' certificates."""
        self.keys: KeyStore | None = None
        """The open key ring (None until the data directory is open); the client API's
        Maintenance service rotates its unlock key and turns autolock on and off."""
        self._offered: asyncio.Future[KeyStore] | None = None
        """While locked: resolved by `unlock` with the key ring a right key opened."""
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._unknown_address_logged: set[int] = set()
        self.http = HttpServer(
            {"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics}
        )

    # --- what the client API's Maintenance service uses (MemberKeys) ---------------------------

    @property
    def member_id(self) -> int:
        return self.cfg.id

    @property
    def cluster_id(self) -> str:
        return self.cfg.cluster_id

    @property
    def member_name(self) -> str:
        return self.cfg.name

    def unlock(self, unlock_key: str) -> bool:
        """Open the key ring with `unlock_key` (`concordctl unlock`) and let the start-up go
        on. False if the member is not waiting for a key; WrongUnlockKeyError or
        InvalidUnlockKeyError (it stays locked) if the key does not open the ring."""
        offered = self._offered
        if self.phase != "locked" or offered is None or offered.done():
            return False
        keys = KeyStore.open(self.cfg.data_dir, unlock_key)
        offered.set_result(keys)
        return True

    # --- HTTP handlers -------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        loop = self.loop
        if self.phase == "locked":
            return False, (
                "locked: waiting for the unlock key (--unlock-key-file or `concordctl unlock`)"
            )
        if self.phase == "stopping":
            return False, "stopping"
        if loop is None:
            return False, "starting: opening the data directory"
        st = loop.status()
        if st.leader == 0:
            reachable = 0
            if self.transport is not None:
                reachable = sum(p.reachable for p in self.transport.stats().values())
            return False, (
                f"no leader known (term {st.term}, {st.role.value}); "
                f"{reachable} of {len(self.transport.peers()) if self.transport else 0} "
                "peers heard from recently"
            )
        applied = loop.fsm.applied_index
        if applied < self.start_commit:
            return (
                False,
                f"catching up: applied {applied} of {self.start_commit} committed at start",
            )
        return True, f"ready: leader {st.leader}, term {st.term}, applied {applied}"

    def _healthz(self) -> Response:
        return Response.text(200, f"ok ({self.phase})")

    def _readyz(self) -> Response:
        ok, reason = self.readiness()
        return Response.text(200 if ok else 503, reason)

    def _metrics(self) -> Response:
        if self.phase == "locked":
            return Response.text(503, "locked: waiting for the unlock key; nothing is served")
        return Response(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)

    # --- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if self._stop.is_set():
            log.info("%s: already stopping", reason)
            return
        log.info("%s: stopping", reason)
        self._stop_reason = reason
        self._stop.set()

    async def run(self) -> int:
        cfg = self.cfg
        # The data dir's lock comes before anything else (storage/datadir.py): a second process on
        # this dir must not listen, answer Unlock or write a byte.
        try:
            if cfg.force_new_cluster:
                check_force_target(cfg.data_dir)  # before locking could create the dir
            dir_lock = DataDirLock.acquire(cfg.data_dir)
        except StorageError as err:
            log.error("%s", err)
            return 1
        except OSError as err:
            log.error("cannot lock the data dir %s: %s", cfg.data_dir, err.strerror or err)
            return 1
        try:
            try:
                host, port = split_host_port(cfg.metrics_listen, "--metrics-listen")
                self.http_port = await self.http.start(host, port)
            except OSError as err:
                log.error("cannot listen on %s for metrics: %s", cfg.metrics_listen, err.strerror)
                return 1
            log.info("serving /metrics, /healthz, /readyz on %s", cfg.metrics_listen)
            try:
                return await self._run_member()
            finally:
                await self.http.close()
        finally:
            dir_lock.release()

    async def _run_member(self) -> int:
        cfg = self.cfg
        api: _ClientApi | None = None
        opened = False
        try:
            if cfg.join is not None:
                cfg = await self._join(cfg.join)
            tls = self._tls = self._load_tls()
            if self.client_api:
                api = await _ClientApi.start(self, cfg.client_listen, tls)
                self.client_port = api.port if api else 0
            wal = await self._open_storage()
            opened = wal is not None
        except (ConfigError, TlsError, StorageError, JoinError) as err:
            if isinstance(err, JoinError) and self._stop.is_set():
                return 0  # asked to stop while joining
            log.error("%s", err)
            return 1
        finally:
            if api is not None and not opened:
                await api.stop(0)
        if wal is None:
            return 0  # asked to stop while locked
        parts = _Parts(MeteredLog(wal, self.metrics.wal_fsync_seconds), client=api)
        try:
            transport = make_transport(
                cfg.peer_transport,
                cfg.id,
                cfg.cluster_id,
                self.clock,
                tls,
                reachable_window_s=max(1.0, 2 * cfg.election_ticks * cfg.tick_ms / 1000),
                on_round_trip=self.metrics.observe_round_trip,
            )
            parts.transport = self.transport = transport
            loop = RaftLoop(
                LoopConfig(id=cfg.id, tick_s=cfg.tick_ms / 1000, election_ticks=cfg.election_ticks),
                parts.wal,
                transport,
                StateMachine(),
                self.clock,
                rng=random.Random(),
                events=self.metrics,
            )
            transport.bind(loop.receive, loop.peer_unreachable)
            loop.add_observer(_LeaderLog(cfg.id, loop))
            loop.add_observer(_ConfWatch(loop, lambda: self._sync_peers(loop, transport)))
            self.start_commit = wal.hard_state.commit
            self.metrics.attach(
                loop, wal_metrics=wal.metrics, peers=transport.stats, now_s=self.clock.monotonic_s
            )
            parts.server = grpc.aio.server(options=server_options())
            transport.add_to_server(parts.server)
            parts.join = self._join_services(loop, transport, tls)
            if parts.join is not None:
                parts.join.add_to_peer_server(parts.server)
            server = parts.server
            self.peer_port = await serve_peers(
                server, transport, cfg.peer_listen, lambda a: _bind(server, a, tls, "peer")
            )
            log.info("peer server listening on %s", cfg.peer_listen)
            if parts.join is not None and tls is not None and cfg.join_listen:
                self.join_port = await parts.join.listen(
                    cfg.join_listen, join_server_credentials(tls)
                )
                log.info(
                    "join port listening on %s (%s)",
                    cfg.join_listen,
                    "signs joining members' certificates"
                    if self._signing_ca is not None
                    else "no --ca-key-file: joins through it are refused",
                )
            self._sync_peers(loop, transport)
            self.loop = loop
            self.phase = "running"
            parts.loop_task = asyncio.create_task(loop.run(), name="raft-loop")
            if api is not None:
                api.attach(loop, self.metrics)
            parts.sync_task = asyncio.create_task(self._peer_sync(loop, transport))
            if cfg.promote and tls is not None:
                parts.promote_task = asyncio.create_task(
                    promote_when_caught_up(
                        cfg.id,
                        loop.status,
                        lambda: loop.fsm.applied_index,
                        transport.peers,
                        member_channel_credentials(tls),
                    ),
                    name="promote",
                )
            parts.register_task = self._keep_directory_entry(loop, transport, tls)
            return await self._wait(parts.loop_task)
        except (ConfigError, OSError) as err:
            log.error("%s", err)
            return 1
        finally:
            self.phase = "stopping"
            await self._shutdown(parts)

    async def _wait(self, loop_task: asyncio.Task[None]) -> int:
        log.info(
            "member %d (%s) of cluster %r running: %d voters, tick %d ms, election %d ticks",
            self.cfg.id,
            self.cfg.name,
            self.cfg.cluster_id,
            len(self.loop.status().conf.voters) if self.loop else 0,
            self.cfg.tick_ms,
            self.cfg.election_ticks,
        )
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({stop, loop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if loop_task.done():
            err = loop_task.exception()
            log.critical("the Raft loop stopped: %s", err or "without an error")
            return 1
        await self._hand_over_leadership()
        return 0

    async def _hand_over_leadership(self) -> None:
        """A stopping leader hands over to its most up-to-date voter, so the cluster does not
        sit out an election timeout. Bounded: peers may be stopping too."""
        loop = self.loop
        me = self.cfg.id
        if loop is None or loop.leader != me:
            return
        st = loop.status()
        candidates = [(p.match, i) for i, p in st.peers.items() if i in st.conf.voters and i != me]
        if not candidates:
            return
        _, target = max(candidates)
        limit_s = min(1.0, self.cfg.election_ticks * self.cfg.tick_ms / 1000)
        watch = _LeaderWatch(me)
        loop.add_observer(watch)
        try:
            await loop.transfer_leader(target)
            async with asyncio.timeout(limit_s):
                await watch.moved.wait()
            log.info("handed leadership to member %d", target)
        except TimeoutError:
            log.info("leadership hand-over to member %d did not finish in time", target)
        except RaftError as err:
            log.info("leadership hand-over to member %d refused: %s", target, err)
        finally:
            loop.remove_observer(watch)

    async def _shutdown(self, parts: _Parts) -> None:
        """Stop accepting, stop the loop, close the transport and the WAL."""
        if parts.sync_task is not None:
            parts.sync_task.cancel()
        if parts.promote_task is not None:
            parts.promote_task.cancel()
        if parts.register_task is not None:
            parts.register_task.cancel()
        if parts.join is not None:
            await parts.join.stop(STOP_GRACE_S / 2)
        if parts.client is not None:
            await parts.client.stop(STOP_GRACE_S)
        if parts.server is not None:
            await parts.server.stop(STOP_GRACE_S / 2)
        if self.loop is not None:
            self.loop.stop()
        if parts.loop_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(parts.loop_task, 5.0)
        if parts.transport is not None:
            await parts.transport.close()
        parts.wal.close()
        log.info("stopped (%s); WAL closed", self._stop_reason or "shut down")

    # --- start-up pieces -----------------------------------------------------------------------

    def _load_tls(self) -> MemberTls | None:
        cfg = self.cfg
        if cfg.insecure:
            log.warning(
                "INSECURE MODE (--insecure): peer and client traffic is plaintext and "
                "unauthenticated; anyone who can reach these ports can join the Raft group and "
                "read or change everything. For local demos only, never in production."
            )
            return None
        if cfg.tls_dir is None:
            raise ConfigError("give --tls-dir, or --insecure for a local demo")
        tls = load_member_tls(cfg.tls_dir)
        if tls.member_id is not None and tls.member_id != cfg.id:
            raise ConfigError(
                f"{cfg.tls_dir}/member.pem is the certificate of member {tls.member_id}, but "
                f"this is member {cfg.id} (--id): give each member its own certificate"
            )
        if cfg.ca_key_file is not None:
            self._signing_ca = load_ca_key(tls.ca_pem, cfg.ca_key_file)
            if not cfg.join_listen:
                log.warning(
                    "--ca-key-file without --join-listen: this member signs only the "
                    "certificates of members that join through its join port, and has none"
                )
        log.info(
            "mutual TLS with certificates from %s (member certificate valid until %s)",
            cfg.tls_dir,
            f"{tls.not_after:%Y-%m-%d}",
        )
        return tls

    async def _open_storage(self) -> DiskWal | None:
        """Open (or create and bootstrap) the data dir; None if stopped while locked."""
        cfg = self.cfg
        if cfg.force_new_cluster:
            check_force_target(cfg.data_dir)  # before anything could create the dir
        keys = await self._open_keys()
        if keys is None:
            return None
        self.keys = keys
        try:
            wal = DiskWal.open(keys)
        except NotInitializedError:
            voters = frozenset(cfg.initial_cluster)
            try:
                joined = read_join_record(cfg.data_dir)
            except JoinError as err:
                raise ConfigError(str(err)) from None
            if joined is not None:
                wal = _create_joined_wal(keys, joined)
                self._record_cluster_id()
                return wal
            if cfg.join_if_new and self._tls is not None:
                verdict = await self._first_start_verdict(self._tls, cfg.id in voters)
                if verdict == WAIT or cfg.no_bootstrap:
                    return self._create_waiting_wal(keys)
            if cfg.no_bootstrap or (cfg.id not in voters and cfg.join_if_new):
                return self._create_waiting_wal(keys)
            if cfg.id not in voters:
                raise ConfigError(
                    f"{cfg.data_dir} is new and --initial-cluster does not list this member "
                    f"(--id {cfg.id}); a new member must be one of the initial voters, or "
                    "join a running cluster with --join HOST:PORT --join-token TOKEN"
                ) from None
            wal = DiskWal.create(keys)
            wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(voters))))
            log.info(
                "bootstrapped a new WAL in %s with voters %s",
                cfg.data_dir,
                ", ".join(str(v) for v in sorted(voters)),
            )
        self._record_cluster_id()
        if wal.recovery is not None:
            r = wal.recovery
            log.warning(
                "recovery cut a torn write at the end of %s (%d bytes at offset %d: %s)",
                r.path,
                r.cut_bytes,
                r.offset,
                r.reason,
            )
        hs = wal.hard_state
        log.info(
            "opened the WAL in %s: term %d, commit %d, last index %d, snapshot at %d",
            cfg.data_dir,
            hs.term,
            hs.commit,
            wal.last_index(),
            wal.snapshot().meta.index,
        )
        if cfg.force_new_cluster:
            try:
                force_new_cluster(wal, cfg.id)
            except BaseException:
                wal.close()
                raise
        return wal

    async def _first_start_verdict(self, tls: MemberTls, first_member: bool) -> str:
        """--join-if-new, a new data dir: ask the first members whether a running cluster
        knew this member (`join.first_start_verdict`). BOOTSTRAP or WAIT; ConfigError (the
        member does not start) when it ran before and lost its data, or, for a first member,
        when that cannot be told."""
        cfg = self.cfg
        me = DirectoryEntry(
            cfg.id, cfg.name, cfg.advertise_peer_url, cfg.advertise_client_url or ""
        )
        peers = {i: a for i, a in cfg.initial_cluster.items() if i != cfg.id}
        verdict, why = await first_start_verdict(
            me, peers, member_channel_credentials(tls), first_member=first_member
        )
        which = "first member" if first_member else "member"
        log.info("new data dir of %s %d: %s (%s)", which, cfg.id, verdict, why)
        if verdict == LOST:
            raise ConfigError(
                f"{cfg.data_dir} is empty, but {why}: its data were lost (a deleted claim?). "
                "Starting it empty as a voter could lose committed writes, so it does not "
                f"start. Remove it from the cluster (`concordctl member remove {cfg.id}`; "
                "transfer leadership first if it leads): it then starts empty and is added "
                "back as a learner (by the operator, or `concordctl member add --readmit`)"
            )
        if verdict == UNSURE:
            raise ConfigError(
                f"{cfg.data_dir} is empty and {why}: cannot tell whether this member ran "
                "before, so it does not bootstrap; it asks again at its next start"
            )
        return verdict

    def _create_waiting_wal(self, keys: KeyStore) -> DiskWal:
        """--join-if-new: an empty WAL with no configuration of its own. The member answers
        the leader once it has been added as a learner; the leader's log (or a snapshot)
        then tells it the configuration, so it can never vote in or form a cluster alone."""
        cfg = self.cfg
        wal = DiskWal.create(keys)
        self._record_cluster_id()
        why = "--no-bootstrap" if cfg.no_bootstrap else "--initial-cluster does not list it"
        log.info(
            "%s is new (member %d, %s): started empty, waiting to be added as a learner "
            "(`concordctl member add %d`, or the operator when the StatefulSet scales up)",
            cfg.data_dir,
            cfg.id,
            why,
            cfg.id,
        )
        return wal

    def _record_cluster_id(self) -> None:
        """Record the cluster id in a data dir that has none yet (new, or written before ids
        were recorded), so that a start with another --cluster-id is refused from now on."""
        cfg = self.cfg
        if read_cluster_id(cfg.data_dir) is None:
            try:
                write_cluster_id(cfg.data_dir, cfg.cluster_id)
            except OSError as err:
                raise StorageError(
                    f"cannot record the cluster id in {cfg.data_dir}: {err.strerror or err}"
                ) from None
            log.info("recorded cluster id %r in %s", cfg.cluster_id, cfg.data_dir)

    async def _open_keys(self) -> KeyStore | None:
        """The key store; while it is locked, retry every UNLOCK_POLL_S with whatever
        --unlock-key-file holds by then. None if asked to stop meanwhile."""
        cfg = self.cfg
        announced = False
        refused: bytes | None = None
        while True:
            key = self._read_unlock_key()
            try:
                keys = KeyStore.open(cfg.data_dir, key)
            except NotInitializedError:
                log.info("%s is not initialised: creating a new data directory", cfg.data_dir)
                if cfg.unlock_key_file is not None:
                    log.warning(
                        "--unlock-key-file is ignored for a new data dir: autolock is turned "
                        "on later (`concordctl cluster autolock on`), which prints the key"
                    )
                return KeyStore.create(cfg.data_dir, autolock=False)
            except LockedError:
                if not announced:
                    where = cfg.unlock_key_file or "(no --unlock-key-file given)"
                    log.warning(
                        "LOCKED: %s is autolocked and there is no unlock key in %s; serving "
                        "/healthz and unlocking only, until the key is provided there or "
                        "through `concordctl unlock`",
                        cfg.data_dir,
                        where,
                    )
                    announced = True
            except (WrongUnlockKeyError, InvalidUnlockKeyError) as err:
                digest = hashlib.sha256((key or "").encode()).digest()
                if digest != refused:
                    log.error(
                        "LOCKED: the unlock key in %s is refused: %s", cfg.unlock_key_file, err
                    )
                    refused = digest
            else:
                if self.phase == "locked":
                    log.info("unlocked with the key from %s", cfg.unlock_key_file)
                    self.phase = "starting"
                    self.metrics.locked.set(0)
                return keys
            self.phase = "locked"
            self.metrics.locked.set(1)
            if self._offered is None:
                self._offered = asyncio.get_running_loop().create_future()
            offered = self._offered
            stop = asyncio.ensure_future(self._stop.wait())
            waits: list[asyncio.Future[Any]] = [stop, offered]
            try:
                await asyncio.wait(
                    waits, timeout=UNLOCK_POLL_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stop.cancel()
            if self._stop.is_set():
                return None
            if offered.done():
                log.info("unlocked with a key given through the client API")
                self.phase = "starting"
                self.metrics.locked.set(0)
                return offered.result()

    def _read_unlock_key(self) -> str | None:
        path = self.cfg.unlock_key_file
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.error("cannot read the unlock key file %s: %s", path, err.strerror)
            return None
        return text or None

    # --- joining (join.py) ---------------------------------------------------------------------

    async def _join(self, settings: JoinSettings) -> MemberConfig:
        """Join through `settings.address`, write the TLS dir and the join record, and become
        the member the cluster admitted (its id, name, cluster id and address book)."""
        cfg = self.cfg
        if cfg.tls_dir is None:
            raise ConfigError("--join needs --tls-dir: the new certificate is written there")
        log.info(
            "joining the cluster through %s with join token %s",
            settings.address,
            settings.token.id,
        )
        ask = JoinAsk(
            cfg.id, cfg.name, cfg.advertise_peer_url, cfg.advertise_client_url, cfg.cluster_id
        )
        joined = await join_cluster(settings, ask, stop=self._stop)
        record = joined.record
        write_member_tls(cfg.tls_dir, joined.ca_pem, joined.certified)
        write_join_record(cfg.data_dir, record)
        log.info(
            "joined cluster %r as member %d (%s), a learner; certificate in %s, %s",
            record.cluster_id,
            record.member_id,
            record.name,
            cfg.tls_dir,
            "will ask to become a voter once caught up" if record.promote else "stays a learner",
        )
        self.cfg = replace(
            cfg,
            id=record.member_id,
            name=record.name,
            cluster_id=record.cluster_id,
            initial_cluster=record.dial_addresses(),
            join=None,
            promote=record.promote,
        )
        return self.cfg

    def address_book(self, loop: RaftLoop) -> dict[int, str]:
        """Member id -> peer URL of every member known (what a joining member is given)."""
        cfg = self.cfg
        return _address_book(
            cfg.initial_cluster, loop.fsm.members(), cfg.id, cfg.advertise_peer_url
        )

    def _join_services(
        self, loop: RaftLoop, transport: PeerTransport, tls: MemberTls | None
    ) -> _JoinServices | None:
        """The leader's half of joining (peer port) and the join port, with TLS only."""
        if tls is None:
            return None
        make = _find_server_function("join_services")
        if make is None:
            if self.cfg.join_listen:
                log.warning("this build has no join services: --join-listen is ignored")
            return None
        authority = MemberAuthority(
            cluster_id=self.cfg.cluster_id,
            tls=tls,
            signing_ca=self._signing_ca,
            book=lambda: self.address_book(loop),
            peers=transport.peers,
        )
        services: _JoinServices = make(loop, authority)
        return services

    def _keep_directory_entry(
        self, loop: RaftLoop, transport: PeerTransport, tls: MemberTls | None
    ) -> asyncio.Task[None] | None:
        """List this member in the replicated member directory as it advertises itself (the
        first members were never admitted, so only they can say their names and URLs)."""
        cfg = self.cfg
        if not cfg.advertise_peer_url or not cfg.advertise_client_url:
            log.warning(
                "not listed in the member directory: it listens on every address, so give "
                "--advertise-peer-url and --advertise-client-url for `member list` to show it"
            )
            return None
        # A listen address with port 0 (tests) advertises the port actually bound.
        peer_url = _with_port(cfg.advertise_peer_url, self.peer_port)
        client_url = _with_port(cfg.advertise_client_url, self.client_port)
        me = DirectoryEntry(cfg.id, cfg.name, peer_url, client_url)
        return asyncio.create_task(
            keep_directory_entry(
                me,
                loop.status,
                loop.fsm.members,
                loop.propose,
                keep_listed_name=not cfg.name_given,
                peers=transport.peers,
                credentials=member_channel_credentials(tls) if tls is not None else None,
            ),
            name="directory-entry",
        )

    # --- peers ---------------------------------------------------------------------------------

    def desired_peers(self, loop: RaftLoop) -> dict[int, str]:
        """The configuration's members (voters and learners) with an address each: the
        replicated member table's peer URL, else --initial-cluster."""
        addresses = dict(self.cfg.initial_cluster)
        for m in loop.fsm.members():
            addresses[m.id] = _dial_address(m.peer_url)
        conf = loop.status().conf
        ids = conf.voters | conf.learners
        if self.cfg.id not in ids:
            # Not in its own configuration yet (a joined member before its log or snapshot
            # arrives): it must still answer the leader.
            ids |= set(addresses)
        out: dict[int, str] = {}
        for i in sorted(ids - {self.cfg.id}):
            address = addresses.get(i)
            if address is None:
                if i not in self._unknown_address_logged:
                    log.warning("member %d is in the configuration but has no known address", i)
                    self._unknown_address_logged.add(i)
                continue
            out[i] = address
        return out

    def _sync_peers(self, loop: RaftLoop, transport: PeerTransport) -> None:
        transport.set_peers(self.desired_peers(loop))
        transport.set_voters(loop.status().conf.voters)

    async def _peer_sync(self, loop: RaftLoop, transport: PeerTransport) -> None:
        while True:
            await asyncio.sleep(PEER_SYNC_S)
            self._sync_peers(loop, transport)


class _ConfWatch:
    """Syncs the transport's peers as soon as an applied entry changes the configuration,
    not only at the next periodic sync: a removed member's connection and the messages
    queued for it go at once, so that a process started again on its id (a wiped member
    removed and readmitted) is never handed what was meant for the old one."""

    def __init__(self, loop: RaftLoop, sync: Callable[[], None]) -> None:
        self._loop = loop
        self._sync = sync
        self._conf = loop.status().conf

    def on_applied(self, batch: Sequence[Applied]) -> None:
        conf = self._loop.status().conf
        if conf != self._conf:
            self._conf = conf
            self._sync()

    def on_restored(self) -> None:
        self.on_applied(())

    def on_leader(self, leader: int) -> None:
        pass

    def on_stop(self) -> None:
        pass


class _LeaderWatch:
    """A `LoopObserver` that notices leadership leaving member `me`."""

    def __init__(self, me: int) -> None:
        self.me = me
        self.moved = asyncio.Event()

    def on_applied(self, batch: Sequence[Applied]) -> None:
        pass

    def on_restored(self) -> None:
        pass

    def on_leader(self, leader: int) -> None:
        if leader != self.me:
            self.moved.set()

    def on_stop(self) -> None:
        self.moved.set()


class _LeaderLog(_LeaderWatch):
    """Logs every change of the leader this member knows, in one line."""

    def __init__(self, me: int, loop: RaftLoop) -> None:
        super().__init__(me)
        self._loop = loop

    def on_leader(self, leader: int) -> None:
        term = self._loop.status().term
        if leader:
            who = "this member" if leader == self.me else f"member {leader}"
            log.info("leader is %s (term %d)", who, term)
        else:
            log.info("no leader known (term %d)", term)


@dataclass(slots=True)
class _Parts:
    """What a running member has started, for `_shutdown` to stop in order."""

    wal: MeteredLog
    server: grpc.aio.Server | None = None
    transport: PeerTransport | None = None
    loop_task: asyncio.Task[None] | None = None
    client: _ClientApi | None = None
    sync_task: asyncio.Task[None] | None = None
    join: _JoinServices | None = None
    promote_task: asyncio.Task[None] | None = None
    register_task: asyncio.Task[None] | None = None


def _bind(server: grpc.aio.Server, address: str, tls: MemberTls | None, what: str) -> int:
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, member_server_credentials(tls))
    except RuntimeError as err:
        raise ConfigError(f"cannot listen on {address} for the {what} server: {err}") from None
    if not port:
        raise ConfigError(f"cannot listen on {address} for the {what} server")
    bound: int = port
    return bound


class _Gateway(Protocol):
    """`coordinator.server.server.Gateway`, as this module uses it (found by name)."""

    port: int

    def attach(self, loop: RaftLoop, *, watch_events: MemberMetrics | None = None) -> object: ...

    async def stop(self, grace_s: float | None) -> None: ...


class _ClientApi:
    """The client-facing gRPC API, found by name (see the module docstring):
    `start_gateway(address, credentials, member=...)` starts listening and returns a gateway
    that refuses everything but the Maintenance service until `attach(loop)`."""

    def __init__(self, gateway: _Gateway) -> None:
        self.gateway = gateway
        self.workload: _WorkloadPort | None = None
        self.reviewer: TokenReviewer | None = None

    @property
    def port(self) -> int:
        return self.gateway.port

    @classmethod
    async def start(cls, member: Member, address: str, tls: MemberTls | None) -> _ClientApi | None:
        start_gateway = _find_start_gateway()
        if start_gateway is None:
            log.warning(
                "this build has no client API (coordinator.server is missing): serving the "
                "peer protocol and metrics only"
            )
            return None
        credentials = member_server_credentials(tls) if tls else None
        try:
            gateway = await start_gateway(
                address,
                credentials,
                member=member,
                cluster_ca_pem=tls.ca_pem if tls else None,
                sealing_key_renew_s=member.cfg.sealing_key_renew_days * 86_400,
            )
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"cannot serve the client API on {address}: {err}") from None
        log.info("client API on %s", address)
        api = cls(gateway)
        if member.cfg.workload_identity != "off" and tls is not None:
            try:
                await api._start_workload_port(member, tls)
            except BaseException:
                await gateway.stop(0)
                raise
        return api

    async def _start_workload_port(self, member: Member, tls: MemberTls) -> None:
        cfg = member.cfg
        start: Callable[..., Awaitable[_WorkloadPort]] | None = _find_server_function(
            "start_workload_port"
        )
        if start is None:
            raise ConfigError("this build has no workload port (coordinator.server is too old)")
        try:
            api = (
                ApiServer.from_kubeconfig(cfg.token_review_kubeconfig)
                if cfg.token_review_kubeconfig is not None
                else ApiServer.in_cluster()
            )
        except TokenReviewConfigError as err:
            raise ConfigError(str(err)) from None
        self.reviewer = TokenReviewer(api, audience=cfg.token_audience, clock=member.clock)
        credentials = grpc.ssl_server_credentials(
            [(tls.key_pem, tls.cert_pem)], require_client_auth=False
        )
        try:
            self.workload = await start(
                self.gateway,
                cfg.workload_listen,
                credentials,
                self.reviewer,
                on_denied=member.metrics.count_denied,
            )
        except (OSError, RuntimeError) as err:
            await self.reviewer.close()
            raise ConfigError(
                f"cannot serve the workload port on {cfg.workload_listen}: {err}"
            ) from None
        member.workload_port = self.workload.port
        log.info(
            "workload port on %s (ServiceAccount tokens for audience %r, reviewed by %s)",
            cfg.workload_listen,
            cfg.token_audience,
            api.where,
        )

    def attach(self, loop: RaftLoop, metrics: MemberMetrics) -> None:
        self.gateway.attach(loop, watch_events=metrics)

    async def stop(self, grace_s: float) -> None:
        if self.workload is not None:
            await self.workload.stop(grace_s)
        await self.gateway.stop(grace_s)
        if self.reviewer is not None:
            await self.reviewer.close()


class _WorkloadPort(Protocol):
    """`coordinator.server._workload.WorkloadPort`, as this module uses it."""

    port: int

    async def stop(self, grace_s: float | None = None) -> None: ...


def _find_start_gateway() -> Callable[..., Awaitable[_Gateway]] | None:
    start: Callable[..., Awaitable[_Gateway]] | None = _find_server_function("start_gateway")
    return start


def _find_server_function(name: str) -> Any:  # noqa: ANN401 (found by name; typed by the caller)
    """`coordinator.server.server.<name>`, or None if this build has no client API."""
    try:
        module = importlib.import_module("coordinator.server.server")
    except ModuleNotFoundError as err:
        if err.name in ("coordinator.server", "coordinator.server.server"):
            return None
        raise
    return getattr(module, name, None)


class _JoinServices(Protocol):
    """`coordinator.server._join.JoinServices`, as this module uses it (found by name)."""

    port: int

    def add_to_peer_server(self, server: grpc.aio.Server) -> None: ...

    async def listen(self, address: str, credentials: grpc.ServerCredentials) -> int: ...

    async def stop(self, grace_s: float | None = None) -> None: ...


def _create_joined_wal(keys: KeyStore, record: JoinRecord) -> DiskWal:
    """The WAL of a member that joined over the network: empty, starting from the
    configuration the leader's log starts from (if known: else the leader sends a
    snapshot). Never a configuration of its own: the cluster's log decides it."""
    wal = DiskWal.create(keys)
    if record.log_start is not None:
        wal.save_snapshot(Snapshot(SnapshotMeta(0, 0, record.log_start)))
    log.info(
        "created an empty WAL in %s for member %d, which joined cluster %r: it receives the "
        "log from the leader",
        keys.data_dir,
        record.member_id,
        record.cluster_id,
    )
    return wal


# --- the process -------------------------------------------------------------------------------


class _MemberLogFormatter(logging.Formatter):
    """One line per record: UTC time, level, member, logger, message (and a traceback)."""

    def __init__(self, member: str) -> None:
        super().__init__(
            f"%(asctime)s.%(msecs)03dZ %(levelname)-7s {member} %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
        self.converter = time.gmtime


def configure_logging(member: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MemberLogFormatter(member))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("grpc").setLevel(logging.WARNING)


async def _amain(cfg: MemberConfig) -> int:
    member = Member(cfg)
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, member.request_stop, signal.Signals(sig).name)
    return await member.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        cfg = config_from_args(ns)
    except ConfigError as err:
        parser.error(str(err))
    configure_logging(f"[{cfg.name or 'joining member'}]", ns.log_level)
    _disable_created_metrics()  # no `_created` series beside every counter and histogram
    try:
        return asyncio.run(_amain(cfg))
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())
