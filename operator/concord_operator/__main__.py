"""`concord-operator` (also `python -m concord_operator`): preflight, election, then kopf.

Order of events, and why:

1. Flags (each with an environment variable) are read; the Kubernetes credentials are loaded
   and checked (`KubeApi.preflight`): a missing kubeconfig, missing CRDs or missing RBAC
   stop the process at once with exit status 2 and a message naming what to fix, since
   retrying cannot help.
2. The metrics and probe server starts (`/healthz` answers from now on; `/readyz` says why
   this replica is not ready yet).
3. The replica campaigns in Concord's own election (`--election`) with a coordinator lease
   kept alive. An unreachable coordinator is not fatal: the campaign waits and says so.
   kopf peering is not used (equal-priority peers freeze; STYLE.md lesson 11).
4. Once it leads, the controller and `kopf.operator(standalone=True)` start. kopf is started
   only here, so a standby replica neither watches nor writes. With `--webhook-listen`, kopf
   also serves the sidecar-injection webhook, under a serving identity made now, whose CA
   this replica writes into the webhook configuration's caBundle (webhook.py); standbys are
   not Ready, so the webhook's Service reaches only this replica.
5. If the leadership is lost (the lease ended, or another leader appears), the write gate
   closes at once, kopf is stopped and the process exits with status 1 so that it comes back
   as a fresh candidate. SIGTERM stops it cleanly (the leadership is resigned; status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import kopf

from . import handlers, injection  # handlers: registers the kopf handlers
from .controller import Controller
from .coordinator import Gateway, Leader, credentials
from .kube import KubeApi, StartupError
from .manifests import CERTIFICATE_CONFIGMAP
from .metrics import Metrics, ProbeServer
from .webhook import Injector, service_dns_names, serving_identity

log = logging.getLogger("concord_operator")

EXIT_DEPOSED = 1
EXIT_CONFIG = 2


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="concord-operator",
        description="Concord's Kubernetes operator: Lease, Sequence and SealedSecret resources "
        "backed by a Concord coordinator cluster.",
    )
    p.add_argument(
        "--endpoints",
        default=env("CONCORD_ENDPOINTS", ""),
        help="coordinator client endpoints, host:port,... (env CONCORD_ENDPOINTS)",
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        default=_path(env("CONCORD_TLS_DIR")),
        help="ca.pem, client.pem, client-key.pem for mutual TLS (env CONCORD_TLS_DIR): the "
        "operator/ directory of concordctl cluster init, whose identity may unseal; without "
        "it, plaintext",
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        default=_path(env("KUBECONFIG")),
        help="kubeconfig file (env KUBECONFIG); without it, the pod's service account",
    )
    p.add_argument(
        "--namespace",
        action="append",
        default=[n for n in env("CONCORD_NAMESPACES", "").split(",") if n],
        help="namespace to serve (repeatable; env CONCORD_NAMESPACES, comma-separated); "
        "none: every namespace",
    )
    p.add_argument(
        "--http-listen",
        default=env("CONCORD_OPERATOR_HTTP", "0.0.0.0:8080"),
        help="host:port of /metrics, /healthz and /readyz (env CONCORD_OPERATOR_HTTP)",
    )
    p.add_argument(
        "--identity",
        default=env("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        help="this replica's name in the election (env POD_NAME)",
    )
    p.add_argument(
        "--election",
        default="concord.dev/operator",
        help="the Concord election the replicas campaign in",
    )
    p.add_argument(
        "--leader-ttl-seconds",
        type=float,
        default=10.0,
        help="TTL of the leadership lease: how long a silent leader keeps the election",
    )
    p.add_argument(
        "--status-interval-seconds",
        type=float,
        default=0.5,
        help="at most one status write per object per this interval",
    )
    p.add_argument(
        "--operator-namespace",
        default=env("POD_NAMESPACE", ""),
        help="the operator's own namespace, where it publishes the sealing certificate "
        "(env POD_NAMESPACE; default: the first --namespace, else 'default')",
    )
    p.add_argument(
        "--sealing-certificate-configmap",
        default=CERTIFICATE_CONFIGMAP,
        help="the ConfigMap (in --operator-namespace) holding the current sealing certificate",
    )
    p.add_argument(
        "--sealing-certificate-interval-seconds",
        type=float,
        default=60.0,
        help="how often the sealing key id is checked (a renewed key is published then)",
    )
    w = p.add_argument_group(
        "sidecar injection",
        "the mutating admission webhook (served by the acting replica only; off without "
        "--webhook-listen)",
    )
    w.add_argument(
        "--webhook-listen",
        default=env("CONCORD_WEBHOOK_LISTEN", ""),
        help="host:port of the HTTPS webhook server (env CONCORD_WEBHOOK_LISTEN)",
    )
    w.add_argument(
        "--webhook-service",
        default="concord-operator",
        help="the Service (in --operator-namespace) the configuration calls: the serving "
        "certificate's name",
    )
    w.add_argument(
        "--webhook-configuration",
        default="concord-sidecar-injector",
        help="the MutatingWebhookConfiguration whose caBundle this replica sets",
    )
    w.add_argument(
        "--webhook-cert-dir",
        type=Path,
        default=None,
        help="where the serving certificate and key are written (in memory in the chart); "
        "default: a fresh temporary directory",
    )
    w.add_argument("--sidecar-image", default="ghcr.io/concord-dev/concord-sidecar:latest")
    w.add_argument("--sidecar-image-pull-policy", default="IfNotPresent")
    w.add_argument(
        "--sidecar-endpoints",
        default="",
        help="the members' workload-identity ports as the sidecars dial them, host:port,... "
        "(the injected sidecar has a token, no client certificate: the client ports would "
        "refuse it); default: --endpoints",
    )
    w.add_argument(
        "--sidecar-token-audience",
        default="concord",
        help="the audience of the projected token injected pods get: the members' --token-audience",
    )
    w.add_argument(
        "--sidecar-ca-configmap",
        default="concord-ca",
        help="ConfigMap in each injected pod's namespace holding the CA (ca.pem of "
        "--tls-dir), published there by the webhook",
    )
    w.add_argument(
        "--sidecar-listen-host",
        default="127.0.0.1",
        help="where the sidecar's API listens; $(POD_IP) only where pods share one loopback",
    )
    w.add_argument("--sidecar-port", type=int, default=7490)
    w.add_argument("--sidecar-probe-port", type=int, default=7491)
    p.add_argument("--log-level", default=env("CONCORD_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    args.endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    if not args.endpoints:
        p.error(
            "give the coordinator's endpoints: --endpoints host:port,... (or CONCORD_ENDPOINTS)"
        )
    host, _, port = args.http_listen.rpartition(":")
    if not port.isdigit():
        p.error(f"--http-listen must be host:port, got {args.http_listen!r}")
    args.http_host, args.http_port = host or "0.0.0.0", int(port)
    if not args.operator_namespace:
        args.operator_namespace = args.namespace[0] if args.namespace else "default"
    if args.webhook_listen:
        host, _, port = args.webhook_listen.rpartition(":")
        if not port.isdigit():
            p.error(f"--webhook-listen must be host:port, got {args.webhook_listen!r}")
        args.webhook_host, args.webhook_port = host or "0.0.0.0", int(port)
        if args.tls_dir is None or not (args.tls_dir / "ca.pem").is_file():
            p.error("--webhook-listen needs --tls-dir with ca.pem: the sidecars' CA")
    return args


def start_injection(args: argparse.Namespace, kube: KubeApi) -> tuple[kopf.WebhookServer, Injector]:
    """The webhook's server and injector: a fresh serving identity for the Service's names
    (webhook.py says why the operator makes its own), the pod settings from the flags."""
    identity = serving_identity(service_dns_names(args.webhook_service, args.operator_namespace))
    cert_dir = args.webhook_cert_dir or Path(tempfile.mkdtemp(prefix="concord-webhook-"))
    cert, key = identity.write(cert_dir)
    server = kopf.WebhookServer(
        addr=args.webhook_host, port=args.webhook_port, certfile=cert, pkeyfile=key
    )
    settings = injection.Settings(
        image=args.sidecar_image,
        image_pull_policy=args.sidecar_image_pull_policy,
        endpoints=args.sidecar_endpoints or ",".join(args.endpoints),
        ca_configmap=args.sidecar_ca_configmap,
        listen_host=args.sidecar_listen_host,
        port=args.sidecar_port,
        probe_port=args.sidecar_probe_port,
        token_audience=args.sidecar_token_audience,
    )
    injector = Injector(
        settings,
        kube,
        (args.tls_dir / "ca.pem").read_text(),
        configuration=args.webhook_configuration,
        ca_bundle=identity.ca_pem,
    )
    return server, injector


def _listening(host: str, port: int) -> bool:
    """Whether something accepts connections at host:port (the kernel completes the
    handshake for a listening socket, so this never waits on our own event loop)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    try:
        with socket.create_connection((target, port), timeout=0.2):
            return True
    except OSError:
        return False


async def run(args: argparse.Namespace) -> int:
    try:
        kube = KubeApi.load(args.kubeconfig)
        await asyncio.to_thread(kube.preflight, args.namespace, args.operator_namespace)
        creds = credentials(args.tls_dir)
    except (StartupError, ValueError) as err:
        log.error("cannot start: %s", err)
        return EXIT_CONFIG
    if args.kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(args.kubeconfig)  # for kopf's own login

    metrics = Metrics()
    gateway = Gateway(args.endpoints, creds)
    leader = Leader(gateway, args.election, args.identity, args.leader_ttl_seconds)
    stop = asyncio.Event()
    kopf_ready = asyncio.Event()

    def why_not_ready() -> str:
        if leader.leadership is None:
            return "standby: waiting to lead the operator election"
        if not leader.valid():
            return "leadership not confirmed by the coordinator"
        if not kopf_ready.is_set():
            return "handlers starting"
        if args.webhook_listen and not _listening(args.webhook_host, args.webhook_port):
            # kopf is ready before its webhook server listens; the webhook's Service must not
            # send the API server here until it does (a refused call fails open).
            return "injection webhook not listening yet"
        return ""

    probes = ProbeServer(metrics, why_not_ready)
    await probes.start(args.http_host, args.http_port)
    log.info("probes and metrics on port %d", probes.port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    controller: Controller | None = None
    ca_bundle_task: asyncio.Task[None] | None = None
    operator_task: asyncio.Task[None] | None = None
    kopf_stop = asyncio.Event()
    status = 0
    try:
        campaign = asyncio.create_task(leader.campaign())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({campaign, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            campaign.cancel()
            return 0
        leadership = campaign.result()
        log.info(
            "leading %r as %s with fencing token %d",
            args.election,
            args.identity,
            leadership.fencing_token,
        )
        metrics.leader.set(1)
        metrics.fencing_token.set(leadership.fencing_token)
        controller = Controller(
            gateway,
            kube,
            leader.valid,
            metrics,
            interval_s=args.status_interval_seconds,
            operator_namespace=args.operator_namespace,
            certificate_configmap=args.sealing_certificate_configmap,
            certificate_interval_s=args.sealing_certificate_interval_seconds,
        )
        controller.start()
        memo = kopf.Memo(controller=controller)
        if args.webhook_listen:
            memo.webhook_server, memo.injector = start_injection(args, kube)
            handlers.enable_injection()
            ca_bundle_task = asyncio.create_task(memo.injector.keep_ca_bundle())
        operator_task = asyncio.create_task(
            kopf.operator(
                standalone=True,
                clusterwide=not args.namespace,
                namespaces=args.namespace,
                memo=memo,
                stop_flag=kopf_stop,
                ready_flag=kopf_ready,
            )
        )
        deposed = asyncio.create_task(leader.deposed.wait())
        await asyncio.wait({stopped, deposed, operator_task}, return_when=asyncio.FIRST_COMPLETED)
        if leader.deposed.is_set():
            log.error("stopping: %s", leader.deposed_reason)
            status = EXIT_DEPOSED
        elif operator_task.done() and operator_task.exception() is not None:
            log.error("kopf failed: %r", operator_task.exception())
            status = EXIT_DEPOSED
        # Otherwise a signal: kopf installs its own SIGTERM/SIGINT handlers once it runs, and
        # ends cleanly on them.
    finally:
        metrics.leader.set(0)
        if ca_bundle_task is not None:
            ca_bundle_task.cancel()
        # Controller first: it is what writes statuses and coordinator state.
        if controller is not None:
            await controller.stop()
        if operator_task is not None:
            if leader.deposed.is_set():
                # No graceful stop for a deposed replica: whatever kopf still had in flight
                # must not reach the API server now that another replica may be acting.
                operator_task.cancel()
            else:
                kopf_stop.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(operator_task, 10.0)
        await leader.resign()
        await gateway.close()
        await probes.stop()
        kube.close()
    return status


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
