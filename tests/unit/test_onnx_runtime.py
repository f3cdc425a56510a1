"""Where the service finds its ONNX graphs (:func:`sorterbot_cloud.onnx_runtime.find_graph`).

The export step is a fake that writes a placeholder graph with a real sidecar: the
lookup, the staleness checks and the move into the cache are under test, not the export.
"""

from __future__ import annotations

import json

import pytest

from sorterbot_cloud import onnx_runtime

POINT = {"score_threshold": 0.5, "min_size_px": 512}


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "weights" / "detector.pt"
    path.parent.mkdir()
    path.write_bytes(b"weights v1")
    return path


class FakeExport:
    """Writes a placeholder graph and a real sidecar; counts its calls."""

    def __init__(self, weights, point=POINT):
        self.weights, self.point, self.calls = weights, point, []

    def __call__(self, out):
        self.calls.append(out)
        out.write_bytes(b"fake graph")
        onnx_runtime.write_sidecar(out, model="detector", source_weights=self.weights, inputs={},
                                   operating_point=self.point)


def test_export_into_the_cache_once_then_reuse(weights, tmp_path):
    cache = tmp_path / "var" / "onnx"
    export = FakeExport(weights)
    graph = onnx_runtime.find_graph(weights, POINT, cache, export)
    assert graph == cache / "detector.onnx" and graph.read_bytes() == b"fake graph"
    side = json.loads(onnx_runtime.sidecar_of(graph).read_text())
    assert side["source_sha256"] == onnx_runtime.sha256_file(weights) and side["operating_point"] == POINT
    assert sorted(p.name for p in cache.iterdir()) == ["detector.onnx", "detector.onnx.json"]  # nothing left aside
    assert onnx_runtime.find_graph(weights, POINT, cache, export) == graph
    assert len(export.calls) == 1


def test_a_graph_beside_the_weights_comes_first(weights, tmp_path):
    beside = weights.with_suffix(".onnx")
    FakeExport(weights)(beside)
    export = FakeExport(weights)
    assert onnx_runtime.find_graph(weights, POINT, tmp_path / "cache", export) == beside
    assert export.calls == []


@pytest.mark.parametrize("change", ["weights", "operating_point"])
def test_a_stale_graph_is_not_used(weights, tmp_path, change):
    beside = weights.with_suffix(".onnx")
    FakeExport(weights)(beside)
    point = dict(POINT)
    if change == "weights":
        weights.write_bytes(b"weights v2")  # retrained: same name, other bytes
    else:
        point["min_size_px"] = 608
    export = FakeExport(weights, point)
    graph = onnx_runtime.find_graph(weights, point, tmp_path / "cache", export)
    assert graph == tmp_path / "cache" / "detector.onnx" and len(export.calls) == 1


def test_missing_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.pt"):
        onnx_runtime.find_graph(tmp_path / "no_such.pt", POINT, tmp_path, FakeExport(tmp_path / "no_such.pt"))

