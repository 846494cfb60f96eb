"""The concord-sidecar process: flags, the loopback-only bind, the coordinator client, and a
graceful stop.

Identity. With `--token-file` the sidecar authenticates to the members' workload ports with
the pod's projected ServiceAccount token (audience concord; re-read when the kubelet rotates
it), over TLS trusting the cluster CA (`--ca-file`, else ca.pem in the TLS directory), with
no client certificate. The coordinator verifies the token and scopes the pod to
`k8s/<namespace>/`; the sidecar puts that prefix in front of the app's names (lock `foo` is
the coordinator's `k8s/NS/foo`, the very lock of the Lease CR NS/foo), so apps name things
as they like and the operator's view matches. The namespace (`_namespace.py`): `--namespace`,
else POD_NAMESPACE, else the token's own claim (used for naming only: the coordinator
decides); the secrets delivered as files are that namespace's too.

Binding. The API hands out locks in the pod's name and has no authentication of its own yet
(identity comes with workload tokens), so it listens on loopback only: anything else is
refused unless `--listen-any` says the operator means it (exit 2, with why).

Stopping. SIGTERM (kubelet's stop) or SIGINT: every hold is let go (each lock released, each
leadership resigned, through the client library's own bounded release), event streams end
with `released`, then the process exits 0. A hold that cannot be released (no quorum) ends
with its lease's TTL, as the library logs.

Secrets as files (`--secrets`, `_secretfiles.py`): a task of its own on the same client,
started before the port is bound; its first delivery is a condition of /startupz.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path

from coordinator.client import Client, ConcordError

from ._app import Sidecar
from ._namespace import pod_namespace
from ._secretfiles import SecretFiles, SecretFilesConfig, add_flags, config_from

log = logging.getLogger("concord.sidecar")

DEFAULT_LISTEN = "127.0.0.1:7490"


def _usage_error(message: str) -> SystemExit:
    """Bad flags: say why on stderr; exit 2 (as concordctl does for bad input)."""
    print(f"concord-sidecar: {message}", file=sys.stderr)
    return SystemExit(2)


def _parse_listen(raw: str, listen_any: bool) -> tuple[str, int]:
    host, sep, port_text = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise _usage_error(f"--listen must be HOST:PORT, got {raw!r}")
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        if not loopback:
            raise _usage_error(
                f"--listen host {host!r} must be an IP address or localhost"
            ) from None
    if not loopback and not listen_any:
        raise _usage_error(
            f"refusing to listen on {host}: the API is unauthenticated and "
            "meant for the pod's own containers, so it binds loopback only (127.0.0.1, ::1). "
            "Pass --listen-any if another address is really intended."
        )
    return host, int(port_text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="concord-sidecar",
        description="Concord's pod-local HTTP API: locks, elections, sequences, CAS.",
    )
    p.add_argument(
        "--listen", default=DEFAULT_LISTEN, help="HOST:PORT (loopback unless --listen-any)"
    )
    p.add_argument("--listen-any", action="store_true", help="allow a non-loopback --listen")
    p.add_argument(
        "--probe-listen",
        help="HOST:PORT serving only /healthz, /readyz and /startupz, on any address (the "
        "kubelet probes the pod IP; the API stays on loopback)",
    )
    p.add_argument(
        "--endpoints", help="coordinator members host:port,... (default: $CONCORD_ENDPOINTS)"
    )
    p.add_argument("--tls-dir", help="client certificate directory (default: $CONCORD_TLS_DIR)")
    p.add_argument("--insecure", action="store_true", help="plaintext to the coordinator (tests)")
    p.add_argument(
        "--token-file",
        help="the pod's projected ServiceAccount token (audience concord): authenticate with "
        "it to the members' workload ports instead of a client certificate",
    )
    p.add_argument(
        "--ca-file",
        help="the cluster CA to trust with --token-file (default: $CONCORD_CA_FILE, else "
        "ca.pem in --tls-dir / $CONCORD_TLS_DIR)",
    )
    p.add_argument(
        "--namespace",
        help="the pod's namespace: names are mapped to k8s/<namespace>/NAME and --secrets are "
        "read from it (default: $POD_NAMESPACE, else the token's namespace claim, else the "
        "service account's namespace file)",
    )
    p.add_argument(
        "--coordinator-timeout",
        type=float,
        default=5.0,
        help="seconds one coordinator call may take, retries included, before a 503",
    )
    p.add_argument("--log-level", default="INFO")
    add_flags(p)  # --secrets, --secrets-dir, ... (_secretfiles.py)
    return p


def name_prefix(args: argparse.Namespace, env: dict[str, str] | None = None) -> str:
    """ "k8s/<namespace>/" when the pod speaks with a workload token (or names its
    namespace), else "" (a client certificate: names as given). The namespace is the one
    `_namespace.pod_namespace` finds, the same the secrets are read from."""
    env = dict(os.environ) if env is None else env
    if not (args.namespace or args.token_file):
        return ""
    try:
        namespace = pod_namespace(args.namespace, args.token_file, env)
    except OSError as err:
        raise _usage_error(f"cannot read --token-file {args.token_file}: {err}") from None
    if not namespace:
        raise _usage_error(
            "--token-file: cannot tell the pod's namespace; pass --namespace or set "
            "POD_NAMESPACE (the downward API's metadata.namespace)"
        )
    return f"k8s/{namespace}/"


def client_from(args: argparse.Namespace) -> Client:
    env = dict(os.environ)
    if args.token_file:
        return _token_client(args, env)
    if args.endpoints:
        env["CONCORD_ENDPOINTS"] = args.endpoints
    if args.tls_dir:
        env["CONCORD_TLS_DIR"] = args.tls_dir
    if args.insecure:
        env.pop("CONCORD_TLS_DIR", None)
    return Client.from_env(env, timeout_s=args.coordinator_timeout)


def _token_client(args: argparse.Namespace, env: dict[str, str]) -> Client:
    if args.insecure:
        raise _usage_error("--token-file needs TLS: a token sent in plaintext is anyone's")
    endpoints = args.endpoints or env.get("CONCORD_ENDPOINTS", "")
    tls_dir = args.tls_dir or env.get("CONCORD_TLS_DIR", "")
    ca_file = args.ca_file or env.get("CONCORD_CA_FILE", "")
    if not ca_file and tls_dir:
        ca_file = str(Path(tls_dir) / "ca.pem")
    if not ca_file:
        raise _usage_error(
            "--token-file needs the cluster CA to trust: --ca-file, $CONCORD_CA_FILE or a "
            "--tls-dir holding ca.pem"
        )
    if not endpoints:
        raise _usage_error("give the members' workload ports: --endpoints or $CONCORD_ENDPOINTS")
    return Client.with_token(
        endpoints, args.token_file, ca_file, timeout_s=args.coordinator_timeout
    )


async def serve(
    args: argparse.Namespace, host: str, port: int, secrets: SecretFilesConfig | None = None
) -> None:
    client = client_from(args)
    sidecar = Sidecar(client, prefix=name_prefix(args))
    files: SecretFiles | None = None
    delivering: asyncio.Task[None] | None = None
    if secrets is not None:
        files = SecretFiles(client, secrets, sidecar.metrics.registry)
        sidecar.startup_checks.append(files.startup_problem)
        delivering = asyncio.create_task(files.run(), name="concord-sidecar-secrets")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        bound = await sidecar.start(host, port)
        if args.probe_listen:
            probe_host, probe_port = args.probe_listen
            probes = await sidecar.start_probes(probe_host, probe_port)
            print(f"concord-sidecar probes on {probe_host}:{probes}", flush=True)
        # The line tests and scripts wait for: the port actually bound (--listen ...:0).
        print(f"concord-sidecar listening on {host}:{bound}", flush=True)
        await stop.wait()
        log.info("stopping: releasing %d holds", len(sidecar.holds))
        await sidecar.shutdown()
    finally:
        if delivering is not None:
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivering
        if files is not None:
            await files.close()
        await client.close()


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host, port = _parse_listen(args.listen, args.listen_any)
    if args.probe_listen:  # probes reveal nothing: any address will do
        args.probe_listen = _parse_listen(args.probe_listen, listen_any=True)
    try:
        secrets = config_from(args)
    except ValueError as err:
        raise _usage_error(str(err)) from None
    try:
        asyncio.run(serve(args, host, port, secrets))
    except ConcordError as err:  # bad endpoints, a missing TLS file
        print(f"concord-sidecar: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:  # the port is taken
        print(f"concord-sidecar: cannot listen on {args.listen}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
