"""The member's gRPC services from `coordinator.server`, started and stopped by the member.

- `ClientApi`: the client port (`start_gateway`: it listens before the data directory is
  open and answers only the Maintenance service until `attach(loop)`), and with
  `--workload-identity kubernetes` the workload port, whose ServiceAccount tokens a
  `TokenReviewer` verifies;
- `join_services`: the leader's half of joining on the peer port, and the join port
  (`--join-listen`), with TLS only;
- `bind`: a port of a gRPC server, with the member's mutual TLS or in plaintext.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from coordinator.pki import CertifiedKey, MemberTls
from coordinator.runtime.addresses import ConfigError
from coordinator.runtime.clock import Clock
from coordinator.runtime.loop import RaftLoop
from coordinator.runtime.metrics import MemberMetrics
from coordinator.runtime.peer_transport import PeerTransport
from coordinator.runtime.tls import member_server_credentials
from coordinator.runtime.tokenreview import ApiServer, TokenReviewer
from coordinator.runtime.tokenreview import ConfigError as TokenReviewConfigError
from coordinator.server._join import JoinServices
from coordinator.server._maintenance import MemberKeys
from coordinator.server._workload import WorkloadPort
from coordinator.server.server import Gateway, start_gateway, start_workload_port
from coordinator.server.server import join_services as make_join_services

from .config import MemberConfig
from .membership import MemberAuthority

log = logging.getLogger("concord.member")


def bind(server: grpc.aio.Server, address: str, tls: MemberTls | None, what: str) -> int:
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


class ClientApi:
    """The client-facing gRPC API: `start` listens and returns an API that refuses everything
    but the Maintenance service until `attach(loop)`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.workload: WorkloadPort | None = None
        self.reviewer: TokenReviewer | None = None

    @property
    def port(self) -> int:
        return self.gateway.port

    @classmethod
    async def start(
        cls,
        cfg: MemberConfig,
        member: MemberKeys,
        tls: MemberTls | None,
        metrics: MemberMetrics,
        clock: Clock,
    ) -> ClientApi:
        """Listen on `cfg.client_listen` (and the workload port, if configured), for
        `member`'s Maintenance service."""
        address = cfg.client_listen
        credentials = member_server_credentials(tls) if tls else None
        try:
            gateway = await start_gateway(
                address,
                credentials,
                member=member,
                cluster_ca_pem=tls.ca_pem if tls else None,
                sealing_key_renew_s=cfg.sealing_key_renew_days * 86_400,
            )
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"cannot serve the client API on {address}: {err}") from None
        log.info("client API on %s", address)
        api = cls(gateway)
        if cfg.workload_identity != "off" and tls is not None:
            try:
                await api._start_workload_port(cfg, tls, metrics.count_denied, clock)
            except BaseException:
                await gateway.stop(0)
                raise
        return api

    async def _start_workload_port(
        self,
        cfg: MemberConfig,
        tls: MemberTls,
        on_denied: Callable[[str, str], None],
        clock: Clock,
    ) -> None:
        try:
            api = (
                ApiServer.from_kubeconfig(cfg.token_review_kubeconfig)
                if cfg.token_review_kubeconfig is not None
                else ApiServer.in_cluster()
            )
        except TokenReviewConfigError as err:
            raise ConfigError(str(err)) from None
        self.reviewer = TokenReviewer(api, audience=cfg.token_audience, clock=clock)
        credentials = grpc.ssl_server_credentials(
            [(tls.key_pem, tls.cert_pem)], require_client_auth=False
        )
        try:
            self.workload = await start_workload_port(
                self.gateway,
                cfg.workload_listen,
                credentials,
                self.reviewer,
                on_denied=on_denied,
            )
        except (OSError, RuntimeError) as err:
            await self.reviewer.close()
            raise ConfigError(
                f"cannot serve the workload port on {cfg.workload_listen}: {err}"
            ) from None
        log.info(
            "workload port on %s (ServiceAccount tokens for audience %r, reviewed by %s)",
            cfg.workload_listen,
            cfg.token_audience,
            api.where,
        )

    @property
    def workload_port(self) -> int:
        """The workload port actually bound (0: none)."""
        return self.workload.port if self.workload is not None else 0

    def attach(self, loop: RaftLoop, metrics: MemberMetrics) -> None:
        self.gateway.attach(loop, watch_events=metrics)

    async def stop(self, grace_s: float) -> None:
        if self.workload is not None:
            await self.workload.stop(grace_s)
        await self.gateway.stop(grace_s)
        if self.reviewer is not None:
            await self.reviewer.close()


def join_services(
    cfg: MemberConfig,
    loop: RaftLoop,
    transport: PeerTransport,
    tls: MemberTls | None,
    *,
    signing_ca: CertifiedKey | None,
    book: Callable[[], dict[int, str]],
) -> JoinServices | None:
    """The leader's half of joining (peer port) and the join port, with TLS only."""
    if tls is None:
        return None
    authority = MemberAuthority(
        cluster_id=cfg.cluster_id,
        tls=tls,
        signing_ca=signing_ca,
        book=book,
        peers=transport.peers,
    )
    return make_join_services(loop, authority)
