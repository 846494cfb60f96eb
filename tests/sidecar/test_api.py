"""The sidecar's HTTP API against a real in-process 3-member cluster, over real HTTP on
loopback: every route and status code of openapi.yaml, every answer checked against the spec
(tests/sidecar/harness.py), and no 500 anywhere (the rig asserts it on the way out)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from coordinator.client import Client
from coordinator.sidecar import FENCING_HEADER, Sidecar
from coordinator.testing.ports import free_ports
from tests.server.harness import eventually, run, wait_for
from tests.sidecar.harness import FENCE, SPEC, Api, Rig, with_rig


def test_every_route_in_the_spec_is_served_and_nothing_else(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        served = {
            (route.method.lower(), route.resource.canonical)
            for route in r.sidecar.app().router.routes()
            if route.resource is not None and route.method != "HEAD"
        }
        documented = {
            (method, path)
            for path, item in SPEC["paths"].items()
            for method in item
            if method != "parameters"
        }
        assert served == documented

    with_rig(tmp_path, scenario)


def test_health_metrics_and_the_spec_are_served(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        assert (await r.api.call("GET", "/healthz")).status == 200

        async def started() -> bool:
            return (await r.api.call("GET", "/startupz")).status == 200

        await eventually(started)
        assert (await r.api.call("GET", "/readyz")).status == 200
        spec = await r.api.call("GET", "/openapi.yaml")
        assert spec.status == 200 and b"openapi: 3.1.0" in spec.body
        await r.api.call("GET", "/v1/kv/nothing-here")
        metrics = (await r.api.call("GET", "/metrics")).body.decode()
        assert (
            'concord_sidecar_requests_total{method="GET",route="/v1/kv/{key}",status="404"} 1.0'
            in metrics
        )
        assert "concord_sidecar_coordinator_up 1.0" in metrics

    with_rig(tmp_path, scenario)


def test_lock_acquire_conflict_holders_fence_release(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        got = await r.api.call("POST", "/v1/locks/jobs", {"ttl_ms": 3000})
        assert got.status == 201
        hold = got.json()
        assert hold["state"] == "held" and hold["kind"] == "lock"
        assert FENCE.match(got.headers[FENCING_HEADER])
        assert int(got.headers[FENCING_HEADER]) == hold["fencing_token"]

        # Held: a second, non-blocking acquire is 409 at once and leaves nothing queued.
        busy = await r.api.call("POST", "/v1/locks/jobs", {})
        assert busy.status == 409 and "held by someone else" in busy.json()["error"]
        info = (await r.api.call("GET", "/v1/locks/jobs")).json()
        assert info["waiters"] == 0
        assert info["holders"] == [
            {
                "lease": hold["lease"],
                "fencing_token": hold["fencing_token"],
                "acquired_ms": info["holders"][0]["acquired_ms"],
                "mine": True,
            }
        ]
        assert (await r.client.lock_info("jobs")).waiters == 0

        fence = await r.api.call(
            "POST", "/v1/locks/jobs/fence", {"fencing_token": hold["fencing_token"]}
        )
        assert fence.status == 200 and fence.json()["current"] is True

        path = f"/v1/locks/jobs/holds/{hold['lease']}"
        assert (await r.api.call("GET", path)).json()["state"] == "held"
        # The long-poll answers after its wait while the lock is still held.
        assert (await r.api.call("GET", path + "?wait_ms=50")).json()["state"] == "held"
        released = await r.api.call("DELETE", path)
        assert released.status == 200 and released.json()["state"] == "released"
        assert (await r.client.lock_info("jobs")).holders == ()
        stale = await r.api.call(
            "POST", "/v1/locks/jobs/fence", {"fencing_token": hold["fencing_token"]}
        )
        assert stale.json()["current"] is False
        assert (await r.api.call("DELETE", path)).status == 404
        assert (await r.api.call("GET", path)).status == 404
        assert (await r.api.call("GET", path + "/events")).status == 404

        # A new grant has a larger token.
        again = await r.api.call("POST", "/v1/locks/jobs", {})
        assert again.json()["fencing_token"] > hold["fencing_token"]

    with_rig(tmp_path, scenario)


def test_semaphore_admits_max_holders(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        body = {"max_holders": 2}
        a = await r.api.call("POST", "/v1/locks/pool", body)
        b = await r.api.call("POST", "/v1/locks/pool", body)
        assert (a.status, b.status) == (201, 201)
        assert (await r.api.call("POST", "/v1/locks/pool", body)).status == 409
        info = (await r.api.call("GET", "/v1/locks/pool")).json()
        assert {h["lease"] for h in info["holders"]} == {a.json()["lease"], b.json()["lease"]}

    with_rig(tmp_path, scenario)


def test_blocking_acquire_times_out_with_408_and_leaves_no_grant(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        first = await r.api.call("POST", "/v1/locks/busy", {})
        assert first.status == 201
        waited = await r.api.call("POST", "/v1/locks/busy", {"wait_ms": 300})
        assert waited.status == 408 and "not obtained within" in waited.json()["error"]
        info = await r.client.lock_info("busy")
        assert [h.lease for h in info.holders] == [first.json()["lease"]]
        assert info.waiters == 0  # its place in line was withdrawn

        # A blocking acquire that the release lets through gets the lock.
        waiting = asyncio.create_task(r.api.call("POST", "/v1/locks/busy", {"wait_ms": 10_000}))
        await eventually(lambda: _waiters(r, "busy", 1))
        await r.api.call("DELETE", f"/v1/locks/busy/holds/{first.json()['lease']}")
        second = await waiting
        assert second.status == 201
        assert second.json()["fencing_token"] > first.json()["fencing_token"]

    with_rig(tmp_path, scenario)


def test_an_app_that_hangs_up_mid_wait_leaves_nothing_queued(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        first = await r.api.call("POST", "/v1/locks/hangup", {})
        gone = r.api.session.post(
            r.api.base + "/v1/locks/hangup",
            json={"wait_ms": 60_000},
            timeout=aiohttp.ClientTimeout(total=0.5),
        )
        try:
            async with gone:
                raise AssertionError("answered while the lock was held")
        except TimeoutError:
            pass
        await eventually(lambda: _waiters(r, "hangup", 0))
        await r.api.call("DELETE", f"/v1/locks/hangup/holds/{first.json()['lease']}")
        # Nothing was granted behind the app's back either.
        assert (await r.client.lock_info("hangup")).holders == ()
        assert r.sidecar.holds == {}

    with_rig(tmp_path, scenario)


def test_shutdown_releases_holds_and_withdraws_waits_in_flight(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        mine = (await r.api.call("POST", "/v1/locks/mine", {"ttl_ms": 30_000})).json()
        lead = (await r.api.call("POST", "/v1/elections/mine/campaign", {})).json()
        async with r.client.lock("theirs", ttl_ms=30_000):  # held elsewhere: the sidecar waits
            waiting = asyncio.create_task(
                r.api.session.post(r.api.base + "/v1/locks/theirs", json={"wait_ms": 60_000})
            )
            await eventually(lambda: _waiters(r, "theirs", 1))
            await r.sidecar.shutdown()
            try:
                async with await waiting as resp:  # cut off by the shutdown, or refused
                    assert resp.status == 503
            except aiohttp.ClientError:
                pass
            info = await r.client.lock_info("theirs")
            assert info.waiters == 0 and len(info.holders) == 1
        assert (await r.client.lock_info("mine")).holders == ()
        assert await r.client.leader("mine") is None
        assert mine["lease"] != lead["lease"]

    with_rig(tmp_path, scenario)


def test_an_idle_event_stream_sends_heartbeats(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        hold = (await r.api.call("POST", "/v1/locks/idle", {})).json()
        url = f"{r.api.base}/v1/locks/idle/holds/{hold['lease']}/events"
        async with r.api.session.get(url) as resp:
            lines = [await resp.content.readline() for _ in range(3)]  # event, data, blank
            assert lines[0] == b"event: held\n"
            beat = await asyncio.wait_for(resp.content.readline(), 5)  # heartbeat_s is 0.2
            assert beat.startswith(b": ")

    with_rig(tmp_path, scenario)


async def _waiters(r: Rig, name: str, n: int) -> bool:
    return (await r.client.lock_info(name)).waiters == n


def test_a_lease_revoked_behind_the_holders_back_is_reported_at_once(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        called: asyncio.Queue[dict[str, object]] = asyncio.Queue()

        async def on_loss(request: web.Request) -> web.Response:
            await called.put(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/lost", on_loss)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            ttl_ms = 3000
            got = await r.api.call(
                "POST",
                "/v1/locks/doomed",
                {"ttl_ms": ttl_ms, "callback_url": f"http://127.0.0.1:{port}/lost"},
            )
            hold = got.json()
            path = f"/v1/locks/doomed/holds/{hold['lease']}"
            stream = r.api.events(path + "/events")
            assert await anext(stream) == ("held", hold)
            poll = asyncio.create_task(r.api.call("GET", path + "?wait_ms=20000"))

            loop = asyncio.get_running_loop()
            revoked_at = loop.time()
            await r.client.lease_revoke(hold["lease"])  # behind the holder's back
            event, data = await asyncio.wait_for(anext(stream), ttl_ms / 1000)
            assert loop.time() - revoked_at < ttl_ms / 1000
            assert event == "lost" and data["state"] == "lost"
            assert "ended" in data["reason"]
            await stream.aclose()
            polled = await asyncio.wait_for(poll, 5)
            assert polled.json()["state"] == "lost"
            posted = await asyncio.wait_for(called.get(), 5)
            assert posted["lease"] == hold["lease"] and posted["state"] == "lost"

            metrics = (await r.api.call("GET", "/metrics")).body.decode()
            assert 'concord_sidecar_losses_total{kind="lock"} 1.0' in metrics
            # The lost hold is still readable, and DELETE forgets it.
            forgotten = await r.api.call("DELETE", path)
            assert forgotten.status == 200 and forgotten.json()["state"] == "lost"
            assert (await r.api.call("GET", path)).status == 404
        finally:
            await runner.cleanup()

    with_rig(tmp_path, scenario)


def test_a_released_hold_ends_its_event_stream(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        hold = (await r.api.call("POST", "/v1/locks/short", {})).json()
        path = f"/v1/locks/short/holds/{hold['lease']}"
        stream = r.api.events(path + "/events")
        assert (await anext(stream))[0] == "held"
        await r.api.call("DELETE", path)
        event, data = await asyncio.wait_for(anext(stream), 5)
        assert event == "released" and data["state"] == "released"

    with_rig(tmp_path, scenario)


def test_elections_campaign_leader_observe_proclaim_resign(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        assert (await r.api.call("GET", "/v1/elections/sched/leader")).status == 404
        observed = r.api.events("/v1/elections/sched/observe")
        assert await anext(observed) == ("vacant", {"name": "sched"})

        won = await r.api.call("POST", "/v1/elections/sched/campaign", {"value": "pod-a"})
        assert won.status == 201 and won.json()["kind"] == "leadership"
        lead = won.json()
        assert int(won.headers[FENCING_HEADER]) == lead["fencing_token"]
        event, data = await asyncio.wait_for(anext(observed), 5)
        assert event == "leader" and data["value"] == "pod-a" and data["lease"] == lead["lease"]
        leader = await r.api.call("GET", "/v1/elections/sched/leader")
        assert leader.json() == {
            "name": "sched",
            "lease": lead["lease"],
            "fencing_token": lead["fencing_token"],
            "value": "pod-a",
        }

        # A second campaign waits and times out (408), leaving nothing behind.
        lost = await r.api.call(
            "POST", "/v1/elections/sched/campaign", {"value": "b", "wait_ms": 300}
        )
        assert lost.status == 408

        path = f"/v1/elections/sched/leaderships/{lead['lease']}"
        proclaimed = await r.api.call("POST", path + "/proclaim", {"value": "pod-a v2"})
        assert proclaimed.status == 200 and proclaimed.json()["value"] == "pod-a v2"
        event, data = await asyncio.wait_for(anext(observed), 5)
        assert event == "leader" and data["value"] == "pod-a v2"
        assert (await r.api.call("GET", path + "?wait_ms=10")).json()["state"] == "held"

        resigned = await r.api.call("DELETE", path)
        assert resigned.status == 200 and resigned.json()["state"] == "released"
        event, _ = await asyncio.wait_for(anext(observed), 5)
        assert event == "vacant"
        await observed.aclose()
        assert (await r.api.call("GET", "/v1/elections/sched/leader")).status == 404
        assert (await r.api.call("POST", path + "/proclaim", {"value": "x"})).status == 404

    with_rig(tmp_path, scenario)


def test_proclaim_after_the_leadership_is_lost_is_409(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        lead = (await r.api.call("POST", "/v1/elections/e/campaign", {"value": "a"})).json()
        path = f"/v1/elections/e/leaderships/{lead['lease']}"
        await r.client.lease_revoke(lead["lease"])
        polled = await r.api.call("GET", path + "?wait_ms=5000")
        assert polled.json()["state"] == "lost"
        assert (await r.api.call("POST", path + "/proclaim", {"value": "b"})).status == 409

    with_rig(tmp_path, scenario)


def test_sequences_and_compare_and_swap(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        assert (await r.api.call("POST", "/v1/sequences/orders/next", {})).status == 404
        made = await r.api.call("POST", "/v1/sequences/orders", {"start": 100, "increment": 2})
        assert made.status == 201
        assert (await r.api.call("POST", "/v1/sequences/orders", {})).status == 409
        drawn = await r.api.call("POST", "/v1/sequences/orders/next", {"count": 3})
        assert drawn.json() == {"name": "orders", "values": [100, 102, 104]}
        assert (await r.api.call("POST", "/v1/sequences/orders/next", {})).json()["values"] == [106]
        top = {"start": 2**63 - 2}
        assert (await r.api.call("POST", "/v1/sequences/last", top)).status == 201
        assert (await r.api.call("POST", "/v1/sequences/last/next", {})).status == 200
        exhausted = await r.api.call("POST", "/v1/sequences/last/next", {})
        assert exhausted.status == 409 and "exhausted" in exhausted.json()["error"]

        key = "/v1/kv/app%2Fconfig"
        assert (await r.api.call("GET", key)).status == 404
        created = await r.api.call("POST", key, {"value": "v1", "expected_version": 0})
        assert created.status == 200
        again = await r.api.call("POST", key, {"value": "v1b", "expected_version": 0})
        assert again.status == 412 and again.json()["current"]["value"] == "v1"
        swapped = await r.api.call("POST", key, {"value": "v2", "expected_value": "v1"})
        assert swapped.status == 200 and swapped.json()["revision"] > created.json()["revision"]
        stale = await r.api.call("POST", key, {"value": "v3", "expected_value": "v1"})
        assert stale.status == 412 and stale.json()["current"]["value"] == "v2"
        put = await r.api.call("PUT", key, {"value": "v4"})
        assert put.status == 200
        got = (await r.api.call("GET", key)).json()
        assert got["key"] == "app/config" and got["value"] == "v4" and got["version"] == 3
        assert (await r.client.get(b"app/config")) is not None

    with_rig(tmp_path, scenario)


def test_bad_input_is_400_naming_the_field(tmp_path: Path) -> None:
    async def scenario(r: Rig) -> None:
        cases = [
            ("POST", "/v1/locks/x", {"ttl_ms": 10}, "ttl_ms"),
            ("POST", "/v1/locks/x", {"wait_ms": -1}, "wait_ms"),
            ("POST", "/v1/locks/x", {"bogus": 1}, "body"),
            ("POST", "/v1/locks/x", {"callback_url": "http://example.com:80/x"}, "callback_url"),
            ("POST", "/v1/locks/" + "n" * 257, {}, "name"),
            ("POST", "/v1/locks/x/fence", {}, "fencing_token"),
            ("POST", "/v1/locks/x/fence", {"fencing_token": "1"}, "fencing_token"),
            ("GET", "/v1/locks/x/holds/0", None, "lease"),
            ("GET", "/v1/locks/x/holds/abc", None, "lease"),
            ("POST", "/v1/elections/e/campaign", {"wait_ms": 0}, "wait_ms"),
            ("POST", "/v1/sequences/s/next", {"count": 0}, "count"),
            ("PUT", "/v1/kv/k", {}, "value"),
            ("POST", "/v1/kv/k", {"value": "v"}, "body"),
        ]
        for method, path, body, field in cases:
            answer = await r.api.call(method, path, body)
            assert answer.status == 400, (method, path, answer.body)
            assert answer.json()["field"] == field, (method, path, answer.json())
        raw = await r.api.session.post(
            r.api.base + "/v1/locks/x",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert raw.status == 400 and (await raw.json())["field"] == "body"
        raw.release()

    with_rig(tmp_path, scenario)


def test_quorum_loss_is_503_with_retry_after_and_a_held_lock_is_lost_within_its_ttl(
    tmp_path: Path,
) -> None:
    async def scenario(r: Rig) -> None:
        async def ready() -> bool:
            return (await r.api.call("GET", "/readyz")).status == 200

        await eventually(ready)
        ttl_ms = 2000
        hold = (await r.api.call("POST", "/v1/locks/held", {"ttl_ms": ttl_ms})).json()
        stream = r.api.events(f"/v1/locks/held/holds/{hold['lease']}/events")
        assert (await anext(stream))[0] == "held"
        await r.api.call("PUT", "/v1/kv/k", {"value": "v"})
        fence = {"fencing_token": hold["fencing_token"]}

        loop = asyncio.get_running_loop()
        for member in [m.id for m in r.cluster.running()][:2]:
            await r.cluster.stop(member)
        stopped_at = loop.time()
        # No renewal can commit now: the hold is reported lost within its TTL (and a little
        # for the last renewal's answer), not silently kept.
        event, data = await asyncio.wait_for(anext(stream), ttl_ms / 1000 + 2)
        assert event == "lost" and "no renewal" in data["reason"], data
        assert loop.time() - stopped_at <= ttl_ms / 1000 + 1
        await stream.aclose()

        calls = [
            ("PUT", "/v1/kv/k", {"value": "v"}),
            ("GET", "/v1/kv/k", None),
            ("POST", "/v1/kv/k", {"value": "w", "expected_value": "v"}),
            ("POST", "/v1/locks/q", {}),
            ("POST", "/v1/locks/q", {"wait_ms": 1000}),  # no lease could even be granted
            ("GET", "/v1/locks/q", None),
            ("POST", "/v1/locks/held/fence", fence),
            ("POST", "/v1/elections/e/campaign", {"wait_ms": 1000}),
            ("GET", "/v1/elections/e/leader", None),
            ("POST", "/v1/sequences/s", {}),
            ("POST", "/v1/sequences/s/next", {}),
        ]
        # Together: each waits out the sidecar's coordinator budget before its 503.
        answers = await asyncio.gather(*(r.api.call(m, p, b) for m, p, b in calls))
        for (method, path, _), answer in zip(calls, answers, strict=True):
            assert answer.status == 503, (method, path, answer.body)
            assert answer.headers["Retry-After"] == "1"

        async def not_ready() -> bool:
            return (await r.api.call("GET", "/readyz")).status == 503

        await eventually(not_ready)
        assert (await r.api.call("GET", "/healthz")).status == 200  # liveness does not fail
        assert (await r.api.call("GET", "/startupz")).status == 200  # started stays started

    with_rig(tmp_path, scenario)


def test_without_a_coordinator_it_is_live_but_neither_started_nor_ready() -> None:
    async def scenario() -> None:
        (port,) = free_ports(1)  # a port nothing listens on
        dead = f"127.0.0.1:{port}"
        client = Client([dead], timeout_s=0.5, connect_timeout_s=0.2)
        sidecar = Sidecar(client, probe_interval_s=0.05)
        port = await sidecar.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as session:
                api = Api(f"http://127.0.0.1:{port}", session)
                await wait_for(lambda: "not reachable" in sidecar.not_ready_reason)
                assert (await api.call("GET", "/healthz")).status == 200
                startup = await api.call("GET", "/startupz")
                assert startup.status == 503 and b"not reachable" in startup.body
                assert (await api.call("GET", "/readyz")).status == 503
                answer = await api.call("PUT", "/v1/kv/k", {"value": "v"})
                assert answer.status == 503 and answer.headers["Retry-After"] == "1"
                metrics = (await api.call("GET", "/metrics")).body.decode()
                assert "concord_sidecar_coordinator_up 0.0" in metrics
        finally:
            await sidecar.shutdown()
            await client.close()

    run(scenario())


def test_the_probe_listener_serves_the_probes_only() -> None:
    """--probe-listen: the kubelet probes the pod IP while the API stays on loopback."""

    async def scenario() -> None:
        (port,) = free_ports(1)
        dead = f"127.0.0.1:{port}"
        client = Client([dead], timeout_s=0.5, connect_timeout_s=0.2)
        sidecar = Sidecar(client, probe_interval_s=0.05)
        await sidecar.start("127.0.0.1", 0)
        probes = await sidecar.start_probes("127.0.0.2", 0)
        try:
            async with aiohttp.ClientSession() as session:
                base = f"http://127.0.0.2:{probes}"
                async with session.get(base + "/healthz") as live:
                    assert live.status == 200
                async with session.get(base + "/startupz") as started:
                    assert started.status == 503
                async with session.get(base + "/readyz") as ready:
                    assert ready.status == 503
                async with session.get(base + "/v1/kv/k") as api:
                    assert api.status == 404  # the API is not served there
        finally:
            await sidecar.shutdown()
            await client.close()

    run(scenario())
