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
   Maintenance.Unlock (`concordctl unlock`), whichever comes first (`datadir.py`). With
   `--force-new-cluster` an existing data dir is first turned into a new one-member cluster of
   this member (`runtime/recovery.py`; refused for a new dir);
3. the Raft loop (`RaftLoop`) over the WAL, the peer gRPC server and the peer transport
   (`--peer-transport`: `FrameTransport`, whose listener takes the peer port and relays gRPC
   callers to the gRPC server, or `GrpcTransport`; see `runtime/peer_transport.py`), with
   mutual TLS from `--tls-dir`, or plaintext with an explicit `--insecure`;
4. the client API (`coordinator.server.server.start_gateway`, `services.py`). It
   listens from the start, between steps 1 and 2: before the Raft loop exists it answers the
   Maintenance service (unlock, autolock status) and refuses everything else with UNAVAILABLE
   "member is locked" / "member is starting"; once the loop runs, it is attached to it and
   serves every service;
5. a level-based peer sync: every second the transport's peer set is made equal to the
   current configuration's members, addressed by the replicated member table or, failing
   that, `--initial-cluster` (a joined member: the address book it was given; `peers.py`);
6. its own entry in the replicated member directory (`membership.keep_directory_entry`): its name,
   the peer URL peers dial it at (`--advertise-peer-url`, else its `--initial-cluster`
   address) and its client URL, so that `concordctl member list` shows the first members
   too (a joined member was listed by its admission already).

Joining (`join.py`): with `--join HOST:PORT --join-token TOKEN` and a new data dir, the member
first joins through another member's join port (it gets its certificate, the cluster id, its
id and the address book), then starts as a learner from an empty WAL and asks to become a
voter once it has caught up. Every member with TLS serves the leader's half of joining on its
peer port; `--join-listen` adds a join port, and `--ca-key-file` lets it sign joiners'
certificates (the services live in `coordinator.server`; `services.py` starts them).

SIGTERM or SIGINT stops it cleanly: a leader first hands leadership to its most
up-to-date follower (bounded wait), then both servers stop accepting, the loop stops, the
transport closes and the WAL is closed. Exit status: 0 after a clean stop, 1 when the member
failed (the WAL, a port, a data dir another process holds), 2 for a bad command line (or a
--cluster-id the data dir does not belong to).

Layering: this package is the composition root of a member process, above the server: it
imports the runtime and `coordinator.server` like any module and wires them together; nothing
imports it. It hands itself to the client API as the `MemberKeys` the Maintenance service
acts on (`member_id`, `member_name`, `phase`, `keys`, `unlock`). The pieces: the command
line (`config.py`), the data directory (`datadir.py`), the gRPC services (`services.py`), the
peer sync (`peers.py`), leadership's log and hand-over (`leadership.py`), joining (`join.py`,
`membership.py`) and the probes' HTTP server (`httpd.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

from coordinator.core import ReadMode
from coordinator.fsm import Member as DirectoryEntry
from coordinator.fsm import StateMachine
from coordinator.pki import (
    CertifiedKey,
    MemberTls,
    TlsError,
    load_ca_key,
    load_member_tls,
    write_member_tls,
)
from coordinator.runtime.clock import Clock, SystemClock
from coordinator.runtime.eventloop import event_loop_problem, run_on
from coordinator.runtime.grpc_transport import server_options
from coordinator.runtime.loop import LoopConfig, RaftLoop
from coordinator.runtime.metrics import MemberMetrics, MeteredLog
from coordinator.runtime.peer_transport import PeerTransport, make_transport, serve_peers
from coordinator.runtime.recovery import check_force_target
from coordinator.runtime.tls import join_server_credentials, member_channel_credentials
from coordinator.server._join import JoinServices
from coordinator.storage import DataDirLock, DiskWal, KeyStore, StorageError

from .config import (
    ConfigError,
    MemberConfig,
    build_parser,
    config_from_args,
    split_host_port,
    with_port,
)
from .datadir import DataDir
from .httpd import HttpServer, Response
from .join import JoinAsk, JoinError, JoinSettings, join_cluster, write_join_record
from .leadership import LeaderLog, hand_over_leadership
from .logs import configure_logging
from .membership import address_book as _address_book
from .membership import keep_directory_entry, promote_when_caught_up
from .peers import PeerSync
from .services import ClientApi, bind, join_services

__all__ = ["ConfigError", "Member", "MemberConfig", "build_parser", "config_from_args", "main"]

log = logging.getLogger("concord.member")

STOP_GRACE_S = 1.0

_disable_created_metrics: Callable[[], None] = disable_created_metrics  # untyped upstream


# --- the member --------------------------------------------------------------------------------


class Member:
    """One member process's parts and their lifecycle (see the module docstring)."""

    def __init__(
        self, cfg: MemberConfig, clock: Clock | None = None, *, client_api: bool = True
    ) -> None:
        self.cfg = cfg
        self.client_api = client_api
        """Serve the client API (off: peers and metrics only, for tests of the peer side)."""
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
        self._datadir: DataDir | None = None
        """While the data directory is being opened: what `unlock` hands the key to."""
        self._stop = asyncio.Event()
        self._stop_reason = ""
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
        datadir = self._datadir
        return datadir is not None and datadir.unlock(unlock_key)

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
        api: ClientApi | None = None
        opened = False
        try:
            if cfg.join is not None:
                cfg = await self._join(cfg.join)
            tls = self._tls = self._load_tls()
            if self.client_api:
                api = await ClientApi.start(cfg, self, tls, self.metrics, self.clock)
                self.client_port, self.workload_port = api.port, api.workload_port
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
                LoopConfig(
                    id=cfg.id,
                    tick_s=cfg.tick_ms / 1000,
                    election_ticks=cfg.election_ticks,
                    read_mode=ReadMode(cfg.read_mode),
                ),
                parts.wal,
                transport,
                StateMachine(),
                self.clock,
                rng=random.Random(),
                events=self.metrics,
            )
            transport.bind(loop.receive, loop.peer_unreachable)
            loop.add_observer(LeaderLog(cfg.id, loop))
            peers = PeerSync(cfg, loop, transport)
            self.start_commit = wal.hard_state.commit
            self.metrics.attach(
                loop, wal_metrics=wal.metrics, peers=transport.stats, now_s=self.clock.monotonic_s
            )
            parts.server = grpc.aio.server(options=server_options())
            transport.add_to_server(parts.server)
            parts.join = join_services(
                cfg,
                loop,
                transport,
                tls,
                signing_ca=self._signing_ca,
                book=lambda: self.address_book(loop),
            )
            if parts.join is not None:
                parts.join.add_to_peer_server(parts.server)
            server = parts.server
            self.peer_port = await serve_peers(
                server, transport, cfg.peer_listen, lambda a: bind(server, a, tls, "peer")
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
            peers.sync()
            self.loop = loop
            self.phase = "running"
            parts.loop_task = asyncio.create_task(loop.run(), name="raft-loop")
            if api is not None:
                api.attach(loop, self.metrics)
            parts.sync_task = asyncio.create_task(peers.run(), name="peer-sync")
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
        if self.loop is not None:
            limit_s = min(1.0, self.cfg.election_ticks * self.cfg.tick_ms / 1000)
            await hand_over_leadership(self.loop, self.cfg.id, limit_s)

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
        """Open (or create and bootstrap) the data dir (`datadir.py`); None if asked to stop
        while locked."""
        datadir = self._datadir = DataDir(self.cfg, self._tls, self._stop, self._on_locked)
        try:
            wal = await datadir.open()
        finally:
            self._datadir = None
        self.keys = datadir.keys
        return wal

    def _on_locked(self, locked: bool) -> None:
        self.phase = "locked" if locked else "starting"
        self.metrics.locked.set(1 if locked else 0)

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
        peer_url = with_port(cfg.advertise_peer_url, self.peer_port)
        client_url = with_port(cfg.advertise_client_url, self.client_port)
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


@dataclass(slots=True)
class _Parts:
    """What a running member has started, for `_shutdown` to stop in order."""

    wal: MeteredLog
    server: grpc.aio.Server | None = None
    transport: PeerTransport | None = None
    loop_task: asyncio.Task[None] | None = None
    client: ClientApi | None = None
    sync_task: asyncio.Task[None] | None = None
    join: JoinServices | None = None
    promote_task: asyncio.Task[None] | None = None
    register_task: asyncio.Task[None] | None = None


# --- the process -------------------------------------------------------------------------------


async def _amain(cfg: MemberConfig) -> int:
    member = Member(cfg)
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, member.request_stop, signal.Signals(sig).name)
    return await member.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    loop_problem = event_loop_problem(ns.event_loop)
    if loop_problem is not None:
        parser.error(loop_problem)
    try:
        cfg = config_from_args(ns)
    except ConfigError as err:
        parser.error(str(err))
    configure_logging(f"[{cfg.name or 'joining member'}]", ns.log_level)
    _disable_created_metrics()  # no `_created` series beside every counter and histogram
    try:
        return run_on(ns.event_loop, _amain(cfg))
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())
