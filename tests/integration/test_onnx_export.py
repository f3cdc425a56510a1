"""Exported (ONNX Runtime) models against the eager PyTorch ones, on the shipped weights.

The graphs are exported into a temporary folder from ``weights/embedder.pt`` and
``weights/detector.pt``; the crops and frames are real photos (``shared/realdata``) and,
where rendered, held-out simulated frames (``data/det/heldout``).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sorterbot_cloud.config import PROJECT_ROOT, Settings

REAL = PROJECT_ROOT.parent / "shared" / "realdata"
HELDOUT = PROJECT_ROOT / "data" / "det" / "heldout"
SETTINGS = Settings.load(environ={})

pytestmark = pytest.mark.skipif(
    not (SETTINGS.detector_weights.is_file() and SETTINGS.embedder_weights.is_file()),
    reason="shipped weights missing (weights/detector.pt, weights/embedder.pt)",
)


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _real_photos(n: int) -> list[Path]:
    photos = sorted((REAL / "gripper_camera" / "Dataset").glob("*/*.jpg"))[:n]
    if not photos:
        pytest.skip(f"no real photos under {REAL}")
    return photos


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data folder whose ONNX cache holds both graphs, exported by the CLI (one thread)."""
    import torch
    from click.testing import CliRunner

    from sorterbot_cloud.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("var")
    cache = root / "onnx"
    runner = CliRunner()
    for args in (["detector", "export", "--weights", str(SETTINGS.detector_weights), "--out", str(cache / "detector.onnx"),
                  "--no-embedder"],
                 ["embedder", "export", "--weights", str(SETTINGS.embedder_weights), "--out", str(cache / "embedder.onnx")]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    torch.set_num_threads(before)
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_embedder_graph_matches_eager(data_dir):
    from sorterbot_cloud.embedding.embedder import Embedder
    from sorterbot_cloud.embedding.onnx_embedder import OnnxEmbedder
    from sorterbot_cloud.onnx_runtime import sha256_file

    graph = data_dir / "onnx" / "embedder.onnx"
    side = json.loads((data_dir / "onnx" / "embedder.onnx.json").read_text())
    assert side["model"] == "embedder" and side["source_sha256"] == sha256_file(SETTINGS.embedder_weights)
    eager = Embedder.from_weights(SETTINGS.embedder_weights)
    onnx = OnnxEmbedder(graph, threads=1)
    rng = np.random.default_rng(0)
    crops = []
    for path in _real_photos(3):
        image = _rgb(path)
        h, w = image.shape[:2]
        for _ in range(3):  # crops of several sizes and aspect ratios, some upscaled
            cw, ch = int(rng.integers(24, w // 3)), int(rng.integers(24, h // 3))
            x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
            crops.append(image[y : y + ch, x : x + cw])
    expected, got = eager.embed(crops), onnx.embed(crops)
    assert got.shape == expected.shape == (9, 512) and got.dtype == np.float32
    cosine = np.sum(expected * got, axis=1)
    assert np.all(1.0 - cosine < 1e-4), 1.0 - cosine
    assert onnx.group_distance == eager.group_distance
    assert onnx.embed([]).shape == (0, 512)


def _frames() -> list[np.ndarray]:
    """Two real gripper-camera photos (1280x720) and, where rendered, three held-out simulated frames."""
    frames = [_rgb(p) for p in _real_photos(2)]
    annotations = HELDOUT / "annotations.json"
    if annotations.is_file():
        images = json.loads(annotations.read_text())["images"]
        frames += [_rgb(HELDOUT / im["file_name"]) for im in images[:3]]
    return frames


@pytest.mark.slow
def test_detector_graph_matches_eager(data_dir):
    from sorterbot_cloud.detection.onnx_detector import OnnxDetector
    from sorterbot_cloud.detection.torchvision_detector import TorchvisionDetector

    graph = data_dir / "onnx" / "detector.onnx"
    side = json.loads((data_dir / "onnx" / "detector.onnx.json").read_text())
    assert side["refine_head_in_graph"] is True  # the shipped weights carry a refine head, used at refine step 1
    assert side["operating_point"]["min_size_px"] == SETTINGS.detector_min_size_px
    eager = TorchvisionDetector.from_settings(SETTINGS)
    onnx = OnnxDetector(graph, threads=1)
    frames = _frames()
    found = 0
    # the graph's height and width are dynamic: a frame smaller than the input (resized up
    # inside the graph), a portrait one and a black one besides the photos
    extra = [cv2.resize(frames[0], (410, 230), interpolation=cv2.INTER_AREA),
             np.ascontiguousarray(frames[0].transpose(1, 0, 2)), np.zeros((1232, 1640, 3), np.uint8)]
    for frame in frames + extra:
        expected, got = eager.detect(frame), onnx.detect(frame)
        assert len(got) == len(expected), frame.shape
        np.testing.assert_array_equal(got.class_ids, expected.class_ids)
        np.testing.assert_allclose(got.boxes_xyxy, expected.boxes_xyxy, atol=1.0)
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-3)
        found += len(got)
    assert found >= len(frames), "the frames hold objects, so the comparison covers boxes"


#: Loads both models the service's way with torch unimportable, runs them on a photo, prints a summary.
_WITHOUT_TORCH = """
import json, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
import cv2
from sorterbot_cloud.detection import load_detector
from sorterbot_cloud.config import Settings
from sorterbot_cloud.embedding import crop_items, load_embedder
settings = Settings.load(environ={}, data_dir=sys.argv[1], inference_runtime="onnxruntime", torch_threads=1)
settings.apply_torch_threads()
detector, embedder = load_detector(settings), load_embedder(settings)
image = cv2.cvtColor(cv2.imread(sys.argv[2]), cv2.COLOR_BGR2RGB)
detections = detector.detect(image)
embeddings = embedder.embed(crop_items(image, detections.boxes_xyxy))
print(json.dumps({"detector": type(detector).__name__, "embedder": type(embedder).__name__,
                  "boxes": detections.boxes_xyxy.tolist(), "embeddings_shape": list(embeddings.shape),
                  "torch_imported": "torch" in sys.modules}))
"""


@pytest.mark.slow
def test_service_runs_the_graphs_without_torch(data_dir):
    import subprocess
    import sys

    from sorterbot_cloud.detection.torchvision_detector import TorchvisionDetector

    photo = _real_photos(1)[0]
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, str(data_dir), str(photo)], capture_output=True,
                          text=True, timeout=120, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["detector"] == "OnnxDetector" and out["embedder"] == "OnnxEmbedder" and not out["torch_imported"]
    expected = TorchvisionDetector.from_settings(SETTINGS).detect(_rgb(photo))
    assert len(expected) >= 1
    np.testing.assert_allclose(np.array(out["boxes"], np.float32).reshape(-1, 4), expected.boxes_xyxy, atol=1.0)
    assert out["embeddings_shape"] == [len(expected), 512]


def test_inference_runtime_setting():
    assert Settings.load(environ={}).inference_runtime == "onnxruntime"
    assert Settings.load(environ={"INFERENCE_RUNTIME": "torch"}).inference_runtime == "torch"
    assert Settings.load(environ={"INFERENCE_RUNTIME": "onnxruntime"}).inference_runtime == "onnxruntime"
    with pytest.raises(ValueError, match="INFERENCE_RUNTIME"):
        Settings.load(environ={"INFERENCE_RUNTIME": "tensorrt"})


def test_embedder_weights_are_resolved_as_the_eager_service_does(tmp_path, monkeypatch):
    from sorterbot_cloud.embedding import embedder as eager
    from sorterbot_cloud.embedding import onnx_embedder

    def both(configured, shipped):
        choice = eager.resolve_weights(configured, shipped=shipped)
        return (choice.path, choice.source), onnx_embedder.resolve_weights(configured, shipped=shipped)

    expected, got = both(SETTINGS.embedder_weights, SETTINGS.embedder_weights)
    assert got == expected == (SETTINGS.embedder_weights, "shipped")
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / eager.IMAGENET_RESNET18_FILE).write_bytes(b"")  # only its presence is looked at
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    missing = tmp_path / "no_shipped.pt"
    expected, got = both(missing, missing)
    assert got == expected == (checkpoints / eager.IMAGENET_RESNET18_FILE, "torch-cache")
    expected, got = both(SETTINGS.embedder_weights, missing)
    assert got == expected == (SETTINGS.embedder_weights, "configured")
