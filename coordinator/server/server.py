"""Start the client-facing gRPC server (`concord.v1`) for one member.

Two ways in:

- `start_gateway(address, credentials, member=...)` listens at once, before the member has a
  Raft loop: it answers the Maintenance service (unlock, autolock) and refuses everything
  else with the member's phase ("member is locked: run concordctl unlock", "member is
  starting"). `Gateway.attach(loop)` then brings up every service over the loop. The member
  process (`concord-coordinator`) uses this, so a locked member can be unlocked remotely.
- `start_server(loop, address, credentials)` / `serve(...)`: the same, attached at once (tests,
  embedding). Its Maintenance service has no member to act on and answers UNIMPLEMENTED.

The loop must run (`loop.run()` in its own task) on the same event loop. With `credentials`
None the server listens without TLS (tests, local development); the member process passes TLS
server credentials. `start_server` returns the bound port (for "host:0") and a `stop` that also
detaches the services from the loop.

Everything runs on the caller's event loop: handlers read the state machine between the
loop's applies, so they never need a lock (see `coordinator.runtime.loop`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import grpc

from coordinator.runtime.loop import RaftLoop

from ._cluster import ClusterService
from ._core import Core, ServiceConfig
from ._election import ElectionService
from ._errors import ServiceError, unavailable
from ._gateway import Dispatch
from ._join import JoinAuthority, JoinServices
from ._kv import KVService
from ._lease import LeaseService
from ._lock import LockService
from ._maintenance import MaintenanceService, MemberKeys, phase_error
from ._pipeline import PipelineService
from ._policy import Policy
from ._secrets import SecretsService
from ._sequence import SequenceService
from ._watch import WatchService
from ._watchers import WatchEvents
from ._workload import Authenticator, WorkloadPort, listen_workload_port

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Requests and responses (a 1 MiB value, a txn of 128 ops) fit well inside."""

PENDING_CALLS_MAX = 100_000
"""Calls gRPC core may queue before the server takes them (see `client_server_options`)."""


def client_server_options() -> list[tuple[str, int]]:
    """Options of the client-facing server. Clients send keepalive pings every second (with
    or without calls in flight: `coordinator.client._transport`) to notice a stopped member
    quickly; gRPC's defaults would answer such pings with GOAWAY ("too many pings"), so the
    server permits them.

    Bursts of new calls. gRPC core queues a call that arrives before the application has
    asked for the next one (grpc.aio asks one call at a time, on the event loop) and, once
    more than `grpc.server.max_pending_requests` (1,000 by default) wait, cancels new ones at
    random, all of them past the hard limit (3,000): the client sees CANCELLED, a status that
    otherwise means "you cancelled". 1,000 watch streams opened at once (a controller
    restarting its informers) lost about 15 % of them that way. The limits are raised well
    past any burst a cluster's clients make; a pending call costs a few hundred bytes."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.server.max_pending_requests", PENDING_CALLS_MAX),
        ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_MAX),
    ]


@dataclass(frozen=True, slots=True)
class RunningServer:
    server: grpc.aio.Server
    port: int
    """The port actually bound (useful with "host:0")."""
    core: Core
    dispatch: Dispatch
    """What answers each method (a workload port can serve the same: `start_workload_port`)."""

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop listening, end the open RPCs (after `grace_s`) and detach from the loop."""
        await self.server.stop(grace_s)
        self.core.close()


class Gateway:
    """A member's client port: listening from the start, serving the API once attached."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        dispatch: Dispatch,
        config: ServiceConfig,
    ) -> None:
        self.server = server
        self.port = port
        """The port actually bound (useful with "host:0")."""
        self.config = config
        self.dispatch = dispatch
        """What answers each method (swapped at `attach`); the workload port wraps it."""
        self.core: Core | None = None
        self.cluster_ca_pem: bytes | None = None
        """The cluster CA the Cluster service names in join tokens (None: no TLS)."""
        self.maintenance: MaintenanceService | None = None
        """The Maintenance service, which serves Snapshot once attached."""

    def attach(self, loop: RaftLoop, *, watch_events: WatchEvents | None = None) -> Core:
        """Serve every service over `loop` from now on (once); `watch_events` is told what
        the watch hub does (the member's metrics)."""
        if self.core is not None:
            raise RuntimeError("the gateway is already attached to a Raft loop")
        core = self.core = Core(loop, self.config, watch_events)
        if self.maintenance is not None:
            self.maintenance.core = core
        services: dict[str, object] = {
            "KV": KVService(core),
            "Lease": LeaseService(core),
            "Lock": LockService(core),
            "Election": ElectionService(core),
            "Sequence": SequenceService(core),
            "Watch": WatchService(core),
            "Cluster": ClusterService(core, ca_pem=self.cluster_ca_pem),
        }
        secrets = SecretsService(core)
        services["Secrets"] = secrets
        if self.config.sealing_key_renew_s is not None:
            core.spawn(secrets.renew_on_schedule(self.config.sealing_key_renew_s))
        services["Pipeline"] = PipelineService(core, services)
        self.dispatch.attach(list(services.items()))
        return core

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop listening, end the open RPCs (after `grace_s`) and detach from the loop."""
        await self.server.stop(grace_s)
        if self.core is not None:
            self.core.close()


async def start_gateway(
    address: str,
    credentials: grpc.ServerCredentials | None,
    *,
    member: MemberKeys | None = None,
    config: ServiceConfig | None = None,
    cluster_ca_pem: bytes | None = None,
    sealing_key_renew_s: float | None = None,
) -> Gateway:
    """Listen on `address` (TLS iff `credentials`); see the module docstring.
    `cluster_ca_pem`: the cluster CA, for join tokens (JoinTokenCreate).
    `sealing_key_renew_s`: overrides the config's schedule (0: renew on demand only)."""
    cfg = config or ServiceConfig()
    if sealing_key_renew_s is not None:
        cfg = replace(cfg, sealing_key_renew_s=sealing_key_renew_s or None)

    def refusal() -> ServiceError:
        if member is not None:
            return phase_error(member.member_id, member.phase)
        return unavailable("the server is starting: retry in a moment")

    maintenance = MaintenanceService(member, cfg.deadline_s)
    dispatch = Dispatch(maintenance, refusal)
    server = grpc.aio.server(options=client_server_options())
    server.add_generic_rpc_handlers((dispatch,))
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if not port:
        raise OSError(f"cannot listen on {address!r} (in use, or not a host:port)")
    await server.start()
    gateway = Gateway(server, int(port), dispatch, cfg)
    gateway.maintenance = maintenance
    gateway.cluster_ca_pem = cluster_ca_pem
    return gateway


async def start_server(
    loop: RaftLoop,
    address: str,
    credentials: grpc.ServerCredentials | None,
    *,
    config: ServiceConfig | None = None,
    cluster_ca_pem: bytes | None = None,
) -> RunningServer:
    gateway = await start_gateway(
        address, credentials, config=config, cluster_ca_pem=cluster_ca_pem
    )
    core = gateway.attach(loop)
    return RunningServer(gateway.server, gateway.port, core, gateway.dispatch)


async def serve(
    loop: RaftLoop, address: str, credentials: grpc.ServerCredentials | None
) -> grpc.aio.Server:
    """Serve `concord.v1` for `loop` on `address`; TLS iff `credentials` is given."""
    return (await start_server(loop, address, credentials)).server


async def start_workload_port(
    gateway: Gateway | RunningServer,
    address: str,
    credentials: grpc.ServerCredentials,
    authenticator: Authenticator,
    *,
    policy: Policy | None = None,
    on_denied: Callable[[str, str], None] | None = None,
) -> WorkloadPort:
    """The member's workload port over `gateway` (`_workload.py`): the same API for pods with
    a ServiceAccount token, scoped to their namespace. `credentials`: TLS that asks for no
    client certificate."""
    return await listen_workload_port(
        gateway,
        address,
        credentials,
        authenticator,
        client_server_options(),
        policy=policy,
        on_denied=on_denied,
    )


def join_services(loop: RaftLoop, authority: JoinAuthority) -> JoinServices:
    """A member's joining services over `loop` (`_join.py`): Admission for its peer server,
    and the join port."""
    return JoinServices(loop, authority)
