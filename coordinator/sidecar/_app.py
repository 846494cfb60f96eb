"""The sidecar's HTTP API (openapi.yaml beside this module is its contract) over one `Client`.

Holds. Every lock or leadership the app takes through the sidecar is a `_Hold`: one task that
sits inside the client library's own `Client.lock()` / `Client.leadership()` block, so the
renewals (every TTL/3 from each renewal's start), the loss detection (a renewal answered
NOT_FOUND, no renewal within the TTL, or the lock's own watch event) and the release on the
way out (revoking the hold's own lease) are the library's, tested there, not a second copy.
The request that acquires waits for that task to report the grant; if the app goes away or
the wait times out, the task leaves its block, which withdraws the place in line (the lease
is revoked), so a 408 leaves no grant behind. A hold is known by (name, lease): the lease is
the hold's own, so it names exactly one grant.

Loss. The library's lost callback marks the hold lost with its reason, wakes every
Server-Sent Events stream and long-poll of that hold, counts it, and POSTs the hold to the
app's callback URL (loopback only: the sidecar never calls out of the pod). A lost hold stays
readable for `LOST_RETENTION_S` (or until the app DELETEs it) so that an app that looks late
still learns why.

Status codes. One meaning each (see openapi.yaml). `_answer_error` maps the client's typed
errors; bad input is caught first, by validating each body against the request schema of the
spec itself (one source of truth for limits), naming the field. Anything unexpected is a 500,
logged with its traceback: the tests assert that none happens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import jsonschema
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from coordinator.client import (
    AlreadyExists,
    Client,
    ConcordError,
    DeadlineExceeded,
    FailedPrecondition,
    Held,
    HeldLeadership,
    InvalidArgument,
    KeyValue,
    LockBusy,
    LockLost,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Unauthenticated,
)

log = logging.getLogger("concord.sidecar")

FENCING_HEADER = "Concord-Fencing-Token"
RETRY_AFTER_S = 1
"""What a 503 tells the app to wait before retrying: a leader election takes well under it."""
LOST_RETENTION_S = 300.0
"""How long a lost hold stays readable (state, reason) if the app never DELETEs it."""
SSE_HEARTBEAT_S = 15.0
"""A comment line this often on an idle event stream, so that a dead app connection is seen."""
BODY_BYTES_MAX = 8 * 1024 * 1024
"""A value may be 1 MiB of UTF-8 (the coordinator's limit), which JSON escapes can make up to
six times longer; past this a body is refused (400) before it is read."""
MAX_NAME_BYTES = 256
MAX_KEY_BYTES = 1024
PROBE_KEY = b"concord/sidecar/probe"
"""Read (linearizably) by the readiness probe: it answers only through a leader with a quorum."""

NO_LEASE = "no lease could be granted"
"""How the client library's `lock()` / `leadership()` say their deadline ran out before the
lease was granted (tests/sidecar/test_api.py pins it through a 503 during quorum loss)."""

Kind = Literal["lock", "leadership"]


def load_spec() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("openapi.yaml").read_text(encoding="utf-8")
    spec: dict[str, Any] = yaml.safe_load(text)
    return spec


class HttpError(Exception):
    """An answer other than success: status, message, and the offending field (or None)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass(eq=False)
class _Hold:
    kind: Kind
    name: str
    lease: int
    fencing_token: int
    ttl_ms: int
    handle: Held
    callback_url: str | None
    value: str = ""
    state: Literal["held", "lost", "released"] = "held"
    reason: str | None = None
    let_go: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to leave the library's block: release (or resign), or forget a lost hold."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the state is no longer "held" (never cleared)."""
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "lease": self.lease,
            "fencing_token": self.fencing_token,
            "ttl_ms": self.ttl_ms,
            "state": self.state,
            "reason": self.reason,
        }
        if self.kind == "leadership":
            out["value"] = self.value
        return out


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


class Sidecar:
    """The API over `client` (which it does not close). `start` serves it; `shutdown` lets go
    of every hold (release, resign), bounded, and stops serving."""

    def __init__(
        self,
        client: Client,
        *,
        probe_interval_s: float = 1.0,
        heartbeat_s: float = SSE_HEARTBEAT_S,
        prefix: str = "",
    ) -> None:
        self.client = client
        self.prefix = prefix
        """Put in front of every name and key the app gives ("k8s/<namespace>/" for a pod
        with a workload token, as the coordinator scopes it; "": names as given). Answers
        show the app's own names."""
        self.probe_interval_s = probe_interval_s
        self.heartbeat_s = heartbeat_s
        self.spec = load_spec()
        self.spec_text = yaml.safe_dump(self.spec, sort_keys=False)
        self.metrics = _Metrics()
        self.holds: dict[tuple[Kind, str, int], _Hold] = {}
        self.started = False
        """A first linearizable read went through (the session exists): /startupz is 200."""
        self.ready = False
        """The last probe went through: /readyz is 200."""
        self.not_ready_reason = "no coordinator session yet"
        self.startup_checks: list[Callable[[], str | None]] = []
        """More conditions of /startupz (each None when met, else why not), e.g. the first
        delivery of the pod's secret files (_secretfiles.py)."""
        self.stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._probe_runner: web.AppRunner | None = None
        self._probe: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._keepers: set[asyncio.Task[None]] = set()
        """Every hold's task, granted or still waiting (shutdown awaits them all)."""
        self._validators = {
            name: jsonschema.Draft202012Validator(
                {"$ref": f"#/components/schemas/{name}", "components": self.spec["components"]}
            )
            for name in self.spec["components"]["schemas"]
        }

    # --- serving ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=BODY_BYTES_MAX)
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/startupz", self.startupz)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/openapi.yaml", self.openapi)
        r.add_post("/v1/locks/{name}", self.lock_acquire)
        r.add_get("/v1/locks/{name}", self.lock_info)
        r.add_post("/v1/locks/{name}/fence", self.lock_fence)
        r.add_get("/v1/locks/{name}/holds/{lease}", self.hold_get("lock"))
        r.add_delete("/v1/locks/{name}/holds/{lease}", self.hold_delete("lock"))
        r.add_get("/v1/locks/{name}/holds/{lease}/events", self.hold_events("lock"))
        r.add_post("/v1/elections/{name}/campaign", self.campaign)
        r.add_get("/v1/elections/{name}/leader", self.leader)
        r.add_get("/v1/elections/{name}/observe", self.observe)
        lead = "/v1/elections/{name}/leaderships/{lease}"
        r.add_get(lead, self.hold_get("leadership"))
        r.add_delete(lead, self.hold_delete("leadership"))
        r.add_get(lead + "/events", self.hold_events("leadership"))
        r.add_post(lead + "/proclaim", self.proclaim)
        r.add_post("/v1/sequences/{name}", self.sequence_create)
        r.add_post("/v1/sequences/{name}/next", self.sequence_next)
        r.add_get("/v1/kv/{key}", self.kv_get)
        r.add_put("/v1/kv/{key}", self.kv_put)
        r.add_post("/v1/kv/{key}", self.kv_cas)
        return app

    async def start(self, host: str, port: int) -> int:
        """Serve on host:port (0: any free port); returns the bound port."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._probe = asyncio.create_task(self._probe_loop(), name="concord-sidecar-probe")
        # handler_cancellation: an app that hangs up mid-wait cancels its handler, and so
        # withdraws its place in line (see `_take`) instead of being granted a lock that
        # nobody would ever release.
        self._runner = web.AppRunner(
            self.app(), access_log=None, shutdown_timeout=2.0, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def start_probes(self, host: str, port: int) -> int:
        """Serve /healthz, /readyz and /startupz alone on host:port (the kubelet probes the
        pod IP, while the API stays on loopback); returns the bound port."""
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/startupz", self.startupz)
        self._probe_runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._probe_runner.setup()
        site = web.TCPSite(self._probe_runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def shutdown(self) -> None:
        """Let go of every hold (the library's release or resign, each bounded by the
        client's rpc budget), then stop serving. Event streams end with `released`."""
        self.stopping.set()
        holds = list(self.holds.values())
        for hold in holds:
            hold.let_go.set()
        tasks = [h.task for h in holds if h.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self._runner is not None:
            await self._runner.cleanup()  # cancels waits in flight: they withdraw (see _take)
            self._runner = None
        if self._probe_runner is not None:
            await self._probe_runner.cleanup()
            self._probe_runner = None
        if self._keepers:
            await asyncio.gather(*self._keepers, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        try:
            response = await handler(request)
        except HttpError as err:
            response = _error(err.status, err.message, err.field)
        except ConcordError as err:
            response = _answer_error(err)
        except web.HTTPException as exc:  # aiohttp's own: 404 no route, 405 method
            response = _error(exc.status, exc.reason, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = _error(500, "internal error (see the sidecar's log)", None)
        self.metrics.requests.labels(request.method, name, str(response.status)).inc()
        return response

    # --- health ----------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.client.timeout_s):
                    await self.client.get(self._key(PROBE_KEY))
            except (ConcordError, TimeoutError) as err:
                if self.ready:
                    log.warning("the coordinator is not reachable: %s", err)
                self.ready = False
                self.not_ready_reason = f"the coordinator is not reachable: {err}"
            else:
                if not self.ready:
                    log.info("coordinator session established")
                self.ready = self.started = True
            self.metrics.coordinator_up.set(1 if self.ready else 0)
            await asyncio.sleep(self.probe_interval_s)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _: web.Request) -> web.Response:
        if self.ready and not self.stopping.is_set():
            return web.Response(text="ready\n")
        reason = "stopping" if self.stopping.is_set() else self.not_ready_reason
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def startupz(self, _: web.Request) -> web.Response:
        if not self.started:
            return web.Response(status=503, text=f"not started: {self.not_ready_reason}\n")
        for check in self.startup_checks:
            problem = check()
            if problem is not None:
                return web.Response(status=503, text=f"not started: {problem}\n")
        return web.Response(text="started\n")

    async def metrics_page(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def openapi(self, _: web.Request) -> web.Response:
        return web.Response(text=self.spec_text, content_type="application/yaml")

    # --- input -----------------------------------------------------------------------------

    async def _body(self, request: web.Request, schema: str) -> dict[str, Any]:
        """The JSON body, checked against the spec's schema (an absent body is {})."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise HttpError(
                400, f"the body is larger than {BODY_BYTES_MAX} bytes", "body"
            ) from None
        if raw.strip():
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as err:
                raise HttpError(400, f"the body is not JSON: {err}", "body") from None
        else:
            body = {}
        errors = sorted(self._validators[schema].iter_errors(body), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.path)
            if not where and first.validator == "required" and isinstance(first.instance, dict):
                missing = [f for f in first.validator_value if f not in first.instance]
                where = missing[0] if missing else ""
            raise HttpError(400, f"{where or 'body'}: {first.message}", where or "body")
        assert isinstance(body, dict)
        return body

    # --- names as the coordinator knows them ---------------------------------------------

    def _name(self, name: str) -> str:
        return self.prefix + name

    def _key(self, key: bytes) -> bytes:
        return self.prefix.encode("utf-8") + key

    def _kv_view(self, kv: KeyValue) -> dict[str, Any]:
        return _kv_view(kv, self.prefix.encode("utf-8"))

    # --- locks -----------------------------------------------------------------------------

    async def lock_acquire(self, request: web.Request) -> web.Response:
        name = _name(request)
        body = await self._body(request, "LockAcquire")
        ttl_ms = int(body.get("ttl_ms", 10_000))
        wait_ms = int(body.get("wait_ms", 0))
        callback = _callback_url(body.get("callback_url"))

        def hold(client: Client) -> contextlib.AbstractAsyncContextManager[Held]:
            return client.lock(
                self._name(name),
                ttl_ms=ttl_ms,
                timeout_s=wait_ms / 1000 if wait_ms else None,
                max_holders=int(body.get("max_holders", 1)),
                lock_delay_ms=int(body.get("lock_delay_ms", 0)),
                wait=wait_ms > 0,
            )

        h = await self._take(
            "lock", name, ttl_ms, hold, callback_url=callback, value="", blocking=wait_ms > 0
        )
        return _granted(h)

    async def lock_info(self, request: web.Request) -> web.Response:
        name = _name(request)
        info = await self.client.lock_info(self._name(name))
        holders = [
            {
                "lease": h.lease,
                "fencing_token": h.fencing_token,
                "acquired_ms": h.acquired_ms,
                "mine": ("lock", name, h.lease) in self.holds,
            }
            for h in info.holders
        ]
        return _json(200, {"name": name, "holders": holders, "waiters": info.waiters})

    async def lock_fence(self, request: web.Request) -> web.Response:
        name = _name(request)
        body = await self._body(request, "FenceCheck")
        token = int(body["fencing_token"])
        current = await self.client.check_fence(self._name(name), token)
        return _json(200, {"name": name, "fencing_token": token, "current": current})

    # --- holds (locks and leaderships alike) -----------------------------------------------

    async def _take(
        self,
        kind: Kind,
        name: str,
        ttl_ms: int,
        hold: Callable[[Client], contextlib.AbstractAsyncContextManager[Held]],
        *,
        callback_url: str | None,
        value: str,
        blocking: bool,
    ) -> _Hold:
        """Start a hold's task and wait for its grant (or its failure, raised here)."""
        if self.stopping.is_set():
            raise HttpError(503, "the sidecar is shutting down", None)
        granted: asyncio.Future[_Hold] = asyncio.get_running_loop().create_future()

        async def keep() -> None:
            h: _Hold | None = None
            try:
                async with hold(self.client) as held:
                    h = mine = _Hold(
                        kind, name, held.lease, held.fencing_token, ttl_ms, held, callback_url
                    )
                    h.value = value
                    h.task = asyncio.current_task()
                    if granted.done():  # the app gave up as it was granted: let go at once
                        return
                    self.holds[(kind, name, h.lease)] = h
                    self.metrics.held.labels(kind).inc()
                    held.add_lost_callback(lambda err: self._lost(mine, err))
                    granted.set_result(h)
                    await h.let_go.wait()
                    if h.state == "lost":
                        self.holds.pop((kind, name, h.lease), None)
            except BaseException as err:
                if not granted.done():
                    granted.set_exception(err)
                    granted.exception()  # read by the requester; not "never retrieved"
                elif isinstance(err, Exception):
                    log.exception("letting go of %s %r failed", kind, name)
                if not isinstance(err, Exception):
                    raise
            finally:
                if h is not None and self.holds.get((kind, name, h.lease)) is h:
                    if h.state == "held":
                        self.metrics.held.labels(kind).dec()
                        h.state = "released"
                        h.changed.set()
                    self.holds.pop((kind, name, h.lease), None)

        task = asyncio.create_task(keep(), name=f"concord-sidecar-{kind}-{name}")
        self._keepers.add(task)
        task.add_done_callback(self._keepers.discard)
        try:
            return await asyncio.shield(granted)
        except asyncio.CancelledError:
            # The app went away mid-wait: leaving the block withdraws the place in line.
            task.cancel()
            raise
        except LockBusy as err:
            raise HttpError(409, str(err), None) from None
        except DeadlineExceeded as err:
            # No wait asked for, or the wait ran out before the hold's lease could even be
            # granted: the coordinator could not answer (no quorum), which is a 503, not a
            # place in a queue that timed out.
            if not blocking or NO_LEASE in str(err):
                raise HttpError(503, f"the coordinator cannot answer now: {err}") from None
            raise HttpError(408, str(err), None) from None
        except LockLost as err:  # lost while waiting in line (the lease ended)
            raise HttpError(503, str(err), None) from None

    def _lost(self, h: _Hold, err: LockLost) -> None:
        if h.state != "held":
            return
        h.state, h.reason = "lost", err.reason
        h.changed.set()
        self.metrics.held.labels(h.kind).dec()
        self.metrics.losses.labels(h.kind).inc()
        loop = asyncio.get_running_loop()
        loop.call_later(LOST_RETENTION_S, h.let_go.set)
        if h.callback_url is not None:
            task = asyncio.create_task(self._call_back(h), name="concord-sidecar-callback")
            task.add_done_callback(lambda _: None)

    async def _call_back(self, h: _Hold) -> None:
        assert self._http is not None and h.callback_url is not None
        try:
            async with self._http.post(h.callback_url, json=h.view()) as resp:
                if resp.status >= 300:
                    log.warning("the loss callback %s answered %d", h.callback_url, resp.status)
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("the loss callback %s failed: %s", h.callback_url, err)

    def _find(self, kind: Kind, request: web.Request) -> _Hold:
        name = _name(request)
        lease = _int_param(request.match_info["lease"], "lease", 1, 2**63 - 1)
        h = self.holds.get((kind, name, lease))
        if h is None:
            what = "lock hold" if kind == "lock" else "leadership"
            raise HttpError(404, f"this sidecar has no {what} of {name!r} under lease {lease}")
        return h

    def hold_get(self, kind: Kind) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def get(request: web.Request) -> web.Response:
            h = self._find(kind, request)
            raw = request.query.get("wait_ms")
            wait_ms = 0 if raw is None else _int_param(raw, "wait_ms", 0, 300_000)
            if wait_ms and h.state == "held":
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_ms / 1000):
                        await _first(h.changed.wait(), self.stopping.wait())
            return _json(200, h.view())

        return get

    def hold_delete(self, kind: Kind) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def delete(request: web.Request) -> web.Response:
            h = self._find(kind, request)
            h.let_go.set()
            if h.task is not None:
                await asyncio.shield(h.task)
            return _json(200, h.view())

        return delete

    def hold_events(self, kind: Kind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def events(request: web.Request) -> web.StreamResponse:
            h = self._find(kind, request)
            stream = _EventStream(request)
            async with _sse(stream) as send:
                await send("held", h.view())
                while not h.changed.is_set():
                    try:
                        async with asyncio.timeout(self.heartbeat_s):
                            await _first(h.changed.wait(), self.stopping.wait())
                    except TimeoutError:
                        await send(None, None)  # also how a vanished app is noticed
                        continue
                    if self.stopping.is_set() and not h.changed.is_set():
                        # Shutdown: the hold is being let go; report how it ended.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.client.rpc_timeout_s + 1):
                                await h.changed.wait()
                        break
                await send(h.state, h.view())
            return stream.response

        return events

    # --- elections -------------------------------------------------------------------------

    async def campaign(self, request: web.Request) -> web.Response:
        name = _name(request)
        body = await self._body(request, "Campaign")
        ttl_ms = int(body.get("ttl_ms", 10_000))
        wait_ms = int(body.get("wait_ms", 30_000))
        value = str(body.get("value", ""))
        callback = _callback_url(body.get("callback_url"))

        def hold(client: Client) -> contextlib.AbstractAsyncContextManager[Held]:
            return client.leadership(
                self._name(name), value.encode(), ttl_ms=ttl_ms, timeout_s=wait_ms / 1000
            )

        h = await self._take(
            "leadership", name, ttl_ms, hold, callback_url=callback, value=value, blocking=True
        )
        return _granted(h)

    async def leader(self, request: web.Request) -> web.Response:
        name = _name(request)
        got = await self.client.leader(self._name(name))
        if got is None:
            raise HttpError(404, f"election {name!r} has no leader")
        return _json(
            200,
            {
                "name": name,
                "lease": got.lease,
                "fencing_token": got.fencing_token,
                "value": got.value.decode("utf-8", "replace"),
            },
        )

    async def observe(self, request: web.Request) -> web.StreamResponse:
        """The leader now, then every change, from the election's watch events. The watch
        starts after the leader read's answer revision would be ideal; the client's `leader`
        does not return one, so the stream starts from "now" (a change in between is still
        reported, as its event arrives after the read)."""
        name = _name(request)
        current = await self.client.leader(self._name(name))
        events = self.client.watch(self._name(name).encode())
        stream = _EventStream(request)
        async with _sse(stream) as send:
            if current is None:
                await send("vacant", {"name": name})
            else:
                await send(
                    "leader",
                    _leader_view(name, current.lease, current.fencing_token, current.value),
                )
            nxt: asyncio.Task[Any] | None = None
            try:
                while not self.stopping.is_set():
                    nxt = nxt or asyncio.ensure_future(anext(events))
                    stop = asyncio.ensure_future(self.stopping.wait())
                    done, _ = await asyncio.wait(
                        {nxt, stop}, timeout=self.heartbeat_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    stop.cancel()
                    if nxt not in done:
                        if not self.stopping.is_set():
                            await send(None, None)
                        continue
                    try:
                        event = nxt.result()
                    except ConcordError as err:
                        await send("error", {"error": str(err)})
                        break
                    nxt = None
                    if event.type.value != "election":
                        continue
                    if event.kv.version == 0:
                        await send("vacant", {"name": name})
                    else:
                        await send(
                            "leader",
                            _leader_view(name, event.kv.lease, event.kv.version, event.kv.value),
                        )
            finally:
                if nxt is not None:
                    nxt.cancel()
                    with contextlib.suppress(BaseException):
                        await nxt
                await events.aclose()
        return stream.response

    async def proclaim(self, request: web.Request) -> web.Response:
        h = self._find("leadership", request)
        body = await self._body(request, "Proclaim")
        assert isinstance(h.handle, HeldLeadership)
        try:
            await h.handle.proclaim(str(body["value"]).encode())
        except (LockLost, FailedPrecondition) as err:
            raise HttpError(409, f"no longer the leader: {err}") from None
        h.value = str(body["value"])
        return _json(200, h.view())

    # --- sequences and keys ----------------------------------------------------------------

    async def sequence_create(self, request: web.Request) -> web.Response:
        name = _name(request)
        body = await self._body(request, "SequenceCreate")
        start, increment = int(body.get("start", 1)), int(body.get("increment", 1))
        await self.client.sequence_create(self._name(name), start, increment)
        return _json(201, {"name": name, "next": start, "increment": increment})

    async def sequence_next(self, request: web.Request) -> web.Response:
        name = _name(request)
        body = await self._body(request, "SequenceNext")
        values = await self.client.sequence_next(self._name(name), int(body.get("count", 1)))
        return _json(200, {"name": name, "values": values})

    async def kv_get(self, request: web.Request) -> web.Response:
        key = _key(request)
        kv = await self.client.get(self._key(key))
        if kv is None:
            raise HttpError(404, f"no key {key.decode()!r}")
        return _json(
            200,
            self._kv_view(kv),
        )

    async def kv_put(self, request: web.Request) -> web.Response:
        key = _key(request)
        body = await self._body(request, "Put")
        revision = await self.client.put(self._key(key), str(body["value"]).encode())
        return _json(200, {"key": key.decode(), "revision": revision})

    async def kv_cas(self, request: web.Request) -> web.Response:
        from coordinator.client import Compare, Get, Put  # noqa: PLC0415 (only CAS needs them)

        key = _key(request)
        full = self._key(key)
        body = await self._body(request, "Cas")
        if "expected_value" in body:
            cmp = Compare(full, "value", "=", str(body["expected_value"]).encode())
        else:
            cmp = Compare(full, "version", "=", int(body["expected_version"]))
        result = await self.client.txn([cmp], [Put(full, str(body["value"]).encode())], [Get(full)])
        if result.succeeded:
            return _json(200, {"key": key.decode(), "revision": result.revision})
        kvs = result.results[0].kvs if result.results else ()
        current = None
        if kvs:
            kv = kvs[0]
            current = self._kv_view(kv)
        return _json(
            412,
            {
                "error": "the expected value or version did not hold; nothing was written",
                "field": None,
                "current": current,
            },
        )


# --- helpers ---------------------------------------------------------------------------------


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def _error(status: int, message: str, field_name: str | None) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return _json(status, {"error": message, "field": field_name}, headers)


def _answer_error(err: ConcordError) -> web.Response:
    """A coordinator error as its one status (the blocking waits map their own first)."""
    if isinstance(err, NotFound):
        return _error(404, str(err), None)
    if isinstance(err, InvalidArgument):
        return _error(400, str(err), None)
    if isinstance(err, AlreadyExists | FailedPrecondition | OutOfRange):
        # The current state does not allow it (it exists; no longer yours; a sequence
        # exhausted): asking again will not help until the state changes.
        return _error(409, str(err), None)
    if isinstance(err, Unauthenticated):
        return _error(401, str(err), None)
    if isinstance(err, PermissionDenied):
        return _error(403, str(err), None)
    # Unavailable, a call's own deadline, no quorum, a member restarting: the coordinator
    # cannot answer now. The app retries; nothing it asked for half-happened that it must undo.
    return _error(503, f"the coordinator cannot answer now: {err}", None)


def _granted(h: _Hold) -> web.Response:
    return _json(201, h.view(), {FENCING_HEADER: str(h.fencing_token)})


def _leader_view(name: str, lease: int, token: int, value: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "lease": lease,
        "fencing_token": token,
        "value": value.decode("utf-8", "replace"),
    }


def _kv_view(kv: KeyValue, prefix: bytes = b"") -> dict[str, Any]:
    key, value = kv.key.removeprefix(prefix), kv.value
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "key": key.decode("utf-8", "replace"),
        "value": text,
        "value_base64": base64.b64encode(value).decode("ascii"),
        "version": kv.version,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "lease": kv.lease,
    }


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_NAME_BYTES:
        raise HttpError(400, f"name is {size} bytes; names are 1..{MAX_NAME_BYTES}", "name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise HttpError(400, "name must be valid UTF-8", "name") from None
    return name


def _key(request: web.Request) -> bytes:
    try:
        key = request.match_info["key"].encode("utf-8")
    except UnicodeEncodeError:
        raise HttpError(400, "key must be valid UTF-8", "key") from None
    if not 1 <= len(key) <= MAX_KEY_BYTES:
        raise HttpError(400, f"key is {len(key)} bytes; keys are 1..{MAX_KEY_BYTES}", "key")
    return key


def _int_param(raw: str, what: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{what} must be an integer, got {raw[:40]!r}", what) from None
    if not low <= value <= high:
        raise HttpError(400, f"{what} must be between {low} and {high}, got {value}", what)
    return value


def _callback_url(raw: object) -> str | None:
    """A loss callback must stay in the pod: http to a loopback address, nothing else."""
    if raw is None:
        return None
    assert isinstance(raw, str)  # the schema says so
    parts = urlsplit(raw)
    host = parts.hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not loopback or port is None:
        raise HttpError(
            400,
            "callback_url must be http://127.0.0.1:PORT/... (or localhost, ::1): the sidecar "
            "calls only loopback addresses",
            "callback_url",
        )
    return raw


async def _first(*waits: Awaitable[object]) -> None:
    """Return once any of `waits` completes (the others are cancelled)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


Send = Callable[[str | None, object], Awaitable[None]]


class _EventStream:
    """A text/event-stream response; `send(event, data)` writes one event (None: a comment,
    the heartbeat). An app that went away ends the stream quietly (see `_sse`)."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"},
        )

    async def send(self, event: str | None, data: object) -> None:
        if event is None:
            chunk = f": {int(time.time())}\n\n"
        else:
            chunk = f"event: {event}\ndata: {json.dumps(data)}\n\n"
        await self.response.write(chunk.encode())


@contextlib.asynccontextmanager
async def _sse(stream: _EventStream) -> AsyncIterator[Send]:
    await stream.response.prepare(stream.request)
    with contextlib.suppress(ConnectionError):
        yield stream.send
        await stream.response.write_eof()
