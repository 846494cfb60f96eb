"""The sidecar's election routes: campaign, leader, observe, proclaim (`ElectionRoutes`, a
base class of `Sidecar`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from coordinator.client import (
    Client,
    ConcordError,
    FailedPrecondition,
    Held,
    HeldLeadership,
    LockLost,
)

from ._hold import Kind, _Hold
from ._http import (
    HttpError,
    _callback_url,
    _EventStream,
    _granted,
    _json,
    _leader_view,
    _name,
    _sse,
)


class ElectionRoutes:
    """`Sidecar`'s election handlers, a base class of it."""

    if TYPE_CHECKING:  # what the election routes use of the `Sidecar` they are a base of
        client: Client
        heartbeat_s: float
        stopping: asyncio.Event

        async def _body(self, request: web.Request, schema: str) -> dict[str, Any]: ...
        def _name(self, name: str) -> str: ...
        def _find(self, kind: Kind, request: web.Request) -> _Hold: ...
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
        ) -> _Hold: ...

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
