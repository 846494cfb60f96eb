"""A schema-driven fuzz run of the sidecar from its own openapi.yaml (schemathesis), against a
real in-process 3-member cluster behind a real sidecar on a loopback socket (served from a
background thread's event loop, since schemathesis calls synchronously).

Bounded and deterministic: a fixed number of examples per operation, derandomized (the seed
comes from each test's name). Every answer must be a documented status code with a body that
fits the documented schema and content type, and never a 500; at the end the sidecar's own
count of 500s must be zero too.

Two bounds keep the run short rather than hide anything: a generated `wait_ms` (a blocking
acquire or campaign, a hold's long-poll) is capped at 200 ms (a campaign on an election an
earlier example won would otherwise wait up to an hour, as asked, or 30 s by default), and
the Server-Sent Events routes, whose answers never end by design, are fuzzed by hypothesis
over their path inputs only (test_fuzz_the_event_stream_routes).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.core import NOT_SET

from coordinator.sidecar import load_spec
from tests.server.harness import Cluster
from tests.sidecar.harness import Rig, rig

schema = schemathesis.openapi.from_dict(load_spec()).exclude(path_regex=r"/(events|observe)$")

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


class LiveSidecar:
    """A cluster and a sidecar on an event loop of their own thread, until `stop`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base_url = ""
        self.rig: Rig | None = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-sidecar", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(60), "the cluster and sidecar did not start"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as err:
            self._error = err
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        c = await Cluster.start(self.root)
        try:
            async with rig(c) as r:
                self.rig = r
                self.base_url = r.api.base
                self._ready.set()
                await self._stop.wait()
        finally:
            await c.close()

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        if self._error is not None:
            raise self._error


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSidecar]:
    s = LiveSidecar(tmp_path_factory.mktemp("fuzz"))
    s.start()
    try:
        yield s
    finally:
        s.stop()  # the rig asserts, on the way out, that the sidecar answered no 500


def _capped(wait_ms: object) -> object:
    """A valid wait cut to 200 ms; anything else (invalid input) as generated."""
    try:
        value = int(str(wait_ms))
    except ValueError:
        return wait_ms
    return min(value, 200) if value >= 0 else wait_ms


@schema.parametrize()
@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_fuzz_the_api_from_its_openapi_file(case: schemathesis.Case, live: LiveSidecar) -> None:
    for where in (case.body, case.query):  # a body's wait, a hold's long-poll
        if isinstance(where, dict) and "wait_ms" in where:
            where["wait_ms"] = _capped(where["wait_ms"])
    if case.path.endswith("/campaign"):  # not the default wait of 30 s
        if isinstance(case.body, dict):
            case.body.setdefault("wait_ms", 200)
        elif case.body is NOT_SET:
            case.body, case.media_type = {"wait_ms": 200}, "application/json"
    response = case.call(base_url=live.base_url, timeout=30)
    case.validate_response(response, checks=CHECKS)
    assert live.rig is not None and live.rig.unexpected_errors() == 0


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(
    route=st.sampled_from(
        [
            "/v1/locks/{name}/holds/{lease}/events",
            "/v1/elections/{name}/leaderships/{lease}/events",
            "/v1/elections/{name}/observe",
        ]
    ),
    name=st.text(min_size=1, max_size=300),
    lease=st.one_of(st.integers(min_value=-5, max_value=2**64), st.text(max_size=5)),
)
def test_fuzz_the_event_stream_routes(
    live: LiveSidecar, route: str, name: str, lease: object
) -> None:
    """The stream routes' path inputs (schemathesis leaves them out: their answers never
    end): a documented status, and for a stream, its content type and a first event."""
    path = route.format(name=quote(name, safe=""), lease=quote(str(lease), safe=""))
    with requests.get(live.base_url + path, stream=True, timeout=30) as resp:
        assert resp.status_code in (200, 400, 404), (path, resp.status_code, resp.text[:300])
        if resp.status_code == 200:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            first = next(resp.iter_lines())
            assert first.startswith(b"event: "), first
        else:
            assert set(resp.json()) == {"error", "field"}
    assert live.rig is not None and live.rig.unexpected_errors() == 0
