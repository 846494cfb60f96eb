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

Here: `Sidecar`, its routes, health and hold handling. Elsewhere: the election routes
(`_elections.py`), `_Hold` (`_hold.py`), the HTTP plumbing and error mapping (`_http.py`),
the metrics (`_metrics.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import aiohttp
import jsonschema
import yaml
from aiohttp import web
from prometheus_client import generate_latest

from coordinator.client import (
    Client,
    ConcordError,
    DeadlineExceeded,
    Held,
    KeyValue,
    LockBusy,
    LockLost,
)

from ._elections import ElectionRoutes
from ._hold import Kind, _Hold
from ._http import (
    HttpError,
    _answer_error,
    _callback_url,
    _error,
    _EventStream,
    _first,
    _granted,
    _int_param,
    _json,
    _key,
    _kv_view,
    _name,
    _sse,
)
from ._metrics import _Metrics

log = logging.getLogger("concord.sidecar")

LOST_RETENTION_S = 300.0
"""How long a lost hold stays readable (state, reason) if the app never DELETEs it."""
SSE_HEARTBEAT_S = 15.0
"""A comment line this often on an idle event stream, so that a dead app connection is seen."""
BODY_BYTES_MAX = 8 * 1024 * 1024
"""A value may be 1 MiB of UTF-8 (the coordinator's limit), which JSON escapes can make up to
six times longer; past this a body is refused (400) before it is read."""
PROBE_KEY = b"concord/sidecar/probe"
"""Read (linearizably) by the readiness probe: it answers only through a leader with a quorum."""

NO_LEASE = "no lease could be granted"
"""How the client library's `lock()` / `leadership()` say their deadline ran out before the
lease was granted (tests/sidecar/test_api.py pins it through a 503 during quorum loss)."""


def load_spec() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("openapi.yaml").read_text(encoding="utf-8")
    spec: dict[str, Any] = yaml.safe_load(text)
    return spec


class Sidecar(ElectionRoutes):
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
