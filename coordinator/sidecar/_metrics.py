"""The sidecar's Prometheus metrics (served on /metrics): requests, holds, losses, and whether
the coordinator answers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "concord_sidecar_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.held = Gauge(
            "concord_sidecar_held",
            "Locks and leaderships held through this sidecar now",
            ["kind"],
            registry=self.registry,
        )
        self.losses = Counter(
            "concord_sidecar_losses",
            "Holds lost (lease ended or not renewed in time) while held",
            ["kind"],
            registry=self.registry,
        )
        self.coordinator_up = Gauge(
            "concord_sidecar_coordinator_up",
            "1 while the last readiness probe of the coordinator succeeded",
            registry=self.registry,
        )
