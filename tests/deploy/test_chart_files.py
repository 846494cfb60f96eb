"""The chart's files, without a cluster: its crds/ are the top-level crds/, byte for byte;
the node agent's pure helpers (image mapping, `$(VAR)` expansion); the dashboard's layout."""

from __future__ import annotations

import json

from coordinator.testing.nodeagent import IMAGE_MAP, image_entrypoint
from coordinator.testing.nodeagent._container import expand
from tests.deploy.chart import CHART, REPO


def test_chart_crds_are_the_top_level_crds() -> None:
    top = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert top, "no CRDs in crds/"
    assert chart.keys() == top.keys(), "charts/concord/crds/ lists other files than crds/"
    stale = [name for name in top if chart[name] != top[name]]
    assert not stale, f"charts/concord/crds/ differs from crds/ in {stale}: run make chart-crds"


def test_values_schema_is_json_and_pins_odd_replicas() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    replicas = schema["properties"]["coordinator"]["properties"]["replicas"]
    assert replicas["enum"] == [1, 3, 5, 7]


def test_images_map_to_console_scripts() -> None:
    assert image_entrypoint("ghcr.io/concord-dev/concord-coordinator:0.1.0", IMAGE_MAP) == [
        "concord-coordinator"
    ]
    assert image_entrypoint("registry:5000/x/concord@sha256:abc", IMAGE_MAP) == [
        "concord-coordinator"
    ]
    assert image_entrypoint("concord-operator", IMAGE_MAP) == ["concord-operator"]
    assert image_entrypoint("quay.io/y/concord-sidecar:1", IMAGE_MAP) == ["concord-sidecar"]
    assert image_entrypoint("docker.io/library/busybox:1", IMAGE_MAP) is None


def test_var_expansion_follows_kubernetes() -> None:
    env = {"POD_IP": "127.0.1.4", "PORT": "7070"}
    assert expand("$(POD_IP):$(PORT)", env) == "127.0.1.4:7070"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(POD_IP)", env) == "$(POD_IP)"


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    # Which series the panels read is checked against real members in
    # tests/runtime/test_metrics.py (and against a live release in test_install.py).
    panels = json.loads((CHART / "files" / "dashboard.json").read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{p['title']!r} is wider than the dashboard"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        assert all(t["expr"] for t in p["targets"]), f"{p['title']!r} has an empty query"
