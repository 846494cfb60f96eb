"""Prometheus metrics and the liveness/readiness endpoints, on one small HTTP server.

- `/metrics`: the families below (a registry of our own, so tests and a second operator in
  one process never see each other's counters).
- `/healthz`: 200 while the event loop answers (a wedged loop fails the probe and the kubelet
  restarts the pod).
- `/readyz`: 200 only while this replica leads and its handlers run; a standby replica, or
  one whose leadership is not currently confirmed, answers 503 with the reason.

Watch lag is the time from the operator receiving a coordinator event to the status write
that includes it: the coalescing window plus the reads and the API server's answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0
)  # fmt: skip
"""Up to minutes: an API server slower than the churn it is asked to mirror queues writes."""


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.reconciles = Counter(
            "concord_operator_reconciles",
            "Reconciles run, by kind and result (ok, unavailable, error)",
            ["kind", "result"],
            registry=r,
        )
        self.errors = Counter(
            "concord_operator_errors",
            "Unexpected errors (a refusal or a bug), by kind",
            ["kind"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "concord_operator_reconcile_seconds",
            "Time to observe, plan, act and write one object's status",
            ["kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.step_seconds = Histogram(
            "concord_operator_reconcile_step_seconds",
            "Time in each step of a reconcile: observe (coordinator reads), act (coordinator "
            "writes), write (the status PATCH)",
            ["step"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.status_patches = Counter(
            "concord_operator_status_patches",
            "Status writes sent to the API server, by kind",
            ["kind"],
            registry=r,
        )
        self.mirrored = Gauge(
            "concord_operator_mirrored_objects",
            "Objects whose status this operator mirrors, by kind",
            ["kind"],
            registry=r,
        )
        self.watch_events = Counter(
            "concord_operator_watch_events",
            "Coordinator watch events received for mirrored objects",
            registry=r,
        )
        self.watch_lag_seconds = Histogram(
            "concord_operator_watch_lag_seconds",
            "From a coordinator event's arrival to the status write that includes it",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.coordinator_available = Gauge(
            "concord_operator_coordinator_available",
            "1 while the coordinator answers linearizable reads (has a quorum), else 0",
            registry=r,
        )
        self.unseals = Counter(
            "concord_operator_unseals",
            "Sealed values sent to the coordinator to unseal, by result: ok, or why not "
            "(ScopeMismatch, Tampered, UnknownKey, Malformed, PermissionDenied)",
            ["result"],
            registry=r,
        )
        self.sealing_key_age_seconds = Gauge(
            "concord_operator_sealing_key_age_seconds",
            "Age of the current sealing key (the one the published certificate is for)",
            registry=r,
        )
        self.sealing_key_created_s = 0.0
        """Its creation time (s since the epoch; 0: not known yet)."""
        self.sealing_key_age_seconds.set_function(self._sealing_key_age)
        self.leader = Gauge(
            "concord_operator_leader", "1 while this replica leads and acts, else 0", registry=r
        )
        self.fencing_token = Gauge(
            "concord_operator_fencing_token",
            "The fencing token of this replica's leadership (0: not leading)",
            registry=r,
        )

    def _sealing_key_age(self) -> float:
        # Read at scrape time, so the age is current without a timer of its own.
        if not self.sealing_key_created_s:
            return 0.0
        return max(0.0, time.time() - self.sealing_key_created_s)


class ProbeServer:
    def __init__(self, metrics: Metrics, ready: Callable[[], str]) -> None:
        """`ready()` returns "" when ready, else why not."""
        self.metrics = metrics
        self.ready = ready
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # aiohttp has no public accessor for the bound port
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        why = self.ready()
        if why:
            return web.Response(status=503, text=f"not ready: {why}\n")
        return web.Response(text="ok\n")
