"""A sidecar in front of a real in-process 3-member cluster (tests/server/harness.py), reached
over real HTTP on a loopback socket, and its answers checked against openapi.yaml: every
response's status must be one the spec documents for that route, and its JSON body must
validate against the documented schema. A 500 fails the check (the spec documents none).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema

from coordinator.client import Client
from coordinator.sidecar import Sidecar, load_spec
from tests.server.harness import Cluster, run

SPEC = load_spec()


def _template(path: str) -> str | None:
    """The spec's path template that `path` (no query) matches."""
    segments = path.split("/")
    for template in SPEC["paths"]:
        parts = template.split("/")
        if len(parts) == len(segments) and all(
            p.startswith("{") or p == s for p, s in zip(parts, segments, strict=True)
        ):
            return str(template)
    return None


def _resolve(obj: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in obj:
        node: Any = SPEC
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def check_against_spec(method: str, path: str, status: int, headers: Any, body: bytes) -> None:
    """Fail unless the spec documents `status` for this route and the body fits its schema."""
    template = _template(path.split("?", 1)[0])
    assert template is not None, f"{path} is not in openapi.yaml"
    operation = SPEC["paths"][template].get(method.lower())
    assert operation is not None, f"{method} {template} is not in openapi.yaml"
    documented = operation["responses"]
    assert str(status) in documented, (
        f"{method} {path} answered {status}, which openapi.yaml does not document "
        f"({sorted(documented)}): {body[:500]!r}"
    )
    response = _resolve(documented[str(status)])
    for name in response.get("headers", {}):
        assert name in headers, f"{method} {path} {status} lacks the header {name}"
    content = response.get("content", {})
    ctype = headers.get("Content-Type", "").split(";")[0]
    assert ctype in content, f"{method} {path} {status}: content type {ctype!r} not documented"
    if ctype == "application/json":
        schema = {**content[ctype]["schema"], "components": SPEC["components"]}
        jsonschema.validate(json.loads(body), schema, cls=jsonschema.Draft202012Validator)


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Api:
    """Requests to the sidecar, each checked against the spec."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def call(self, method: str, path: str, body: object = None, **kw: Any) -> Answer:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self.session.request(
            method, self.base + path, data=data, headers=headers, **kw
        ) as resp:
            raw = await resp.read()
            check_against_spec(method, path, resp.status, resp.headers, raw)
            return Answer(resp.status, resp.headers, raw)

    async def events(self, path: str) -> AsyncIterator[tuple[str, Any]]:
        """Server-Sent Events from `path`: (event, data) pairs, heartbeats skipped."""
        async with self.session.get(self.base + path) as resp:
            check_against_spec("GET", path, resp.status, resp.headers, b"")
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            event, data = "", ""
            async for line in resp.content:
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: "):
                    data = text[6:]
                elif text == "" and event:
                    yield event, json.loads(data)
                    event, data = "", ""


@dataclass
class Rig:
    cluster: Cluster
    sidecar: Sidecar
    client: Client
    api: Api
    port: int

    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{m.served.port}" for m in self.cluster.running()]

    def unexpected_errors(self) -> float:
        """How many 500s the sidecar answered (its own count)."""
        total = 0.0
        for metric in self.sidecar.metrics.requests.collect():
            for sample in metric.samples:
                if sample.labels.get("status") == "500" and sample.name.endswith("_total"):
                    total += sample.value
        return total


@asynccontextmanager
async def rig(cluster: Cluster, *, timeout_s: float = 3.0, prefix: str = "") -> AsyncIterator[Rig]:
    endpoints = [f"127.0.0.1:{m.served.port}" for m in cluster.running()]
    client = Client(endpoints, timeout_s=timeout_s, rpc_timeout_s=1.0)
    sidecar = Sidecar(client, probe_interval_s=0.1, heartbeat_s=0.2, prefix=prefix)
    port = await sidecar.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            r = Rig(cluster, sidecar, client, Api(f"http://127.0.0.1:{port}", session), port)
            yield r
            assert r.unexpected_errors() == 0
    finally:
        await sidecar.shutdown()
        await client.close()


def with_rig(root: Path, scenario: Callable[[Rig], Awaitable[None]], *, prefix: str = "") -> None:
    async def main() -> None:
        c = await Cluster.start(root)
        try:
            async with rig(c, prefix=prefix) as r:
                await scenario(r)
        finally:
            await c.close()

    run(main())


FENCE = re.compile(r"^[0-9]+$")
