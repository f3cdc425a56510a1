"""The optional Detectron2 backend: Instances -> Detections, and the backend itself where Detectron2 exists."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from sorterbot_cloud.detection.detectron2_backend import Detectron2Detector, find_config, instances_to_detections


class FakeBoxes:
    """Stands in for detectron2.structures.Boxes (a ``tensor`` attribute of shape (N, 4))."""

    def __init__(self, tensor):
        self.tensor = tensor


class FakeInstances:
    """Stands in for detectron2.structures.Instances with prediction fields."""

    def __init__(self, boxes, scores, classes):
        self.pred_boxes = FakeBoxes(torch.as_tensor(boxes, dtype=torch.float32))
        self.scores = torch.as_tensor(scores, dtype=torch.float32)
        self.pred_classes = torch.as_tensor(classes, dtype=torch.int64)


INSTANCES = FakeInstances([[1, 2, 30, 40], [50, 60, 200, 220], [5, 5, 9, 9]], [0.9, 0.8, 0.3], [0, 1, 0])


@pytest.mark.parametrize(
    "class_id_map, threshold, boxes, classes",
    [
        pytest.param(None, 0.0, [[1, 2, 30, 40], [50, 60, 200, 220], [5, 5, 9, 9]], [0, 1, 0], id="identity"),
        pytest.param(None, 0.5, [[1, 2, 30, 40], [50, 60, 200, 220]], [0, 1], id="threshold"),
        pytest.param({1: 0, 0: 1}, 0.5, [[1, 2, 30, 40], [50, 60, 200, 220]], [1, 0], id="swapped"),
        pytest.param({1: 1}, 0.0, [[50, 60, 200, 220]], [1], id="drop-unmapped"),
    ],
)
def test_instances_to_detections(class_id_map, threshold, boxes, classes):
    det = instances_to_detections(INSTANCES, class_id_map, threshold)
    np.testing.assert_array_equal(det.boxes_xyxy, np.float32(boxes))
    np.testing.assert_array_equal(det.class_ids, classes)
    assert det.scores.dtype == np.float32


def test_instances_conversion_rejects_bad_input():
    with pytest.raises(ValueError, match="class_id_map targets"):
        instances_to_detections(INSTANCES, {0: 5})
    broken = FakeInstances([[1, 2, 3, 4]], [0.5, 0.6], [0])
    with pytest.raises(ValueError, match="disagree"):
        instances_to_detections(broken)


def test_find_config(tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no Detectron2 config"):
        find_config(tmp_path / "model_final.pth")
    (tmp_path / "config.yaml").write_text("MODEL: {}\n")
    assert find_config(tmp_path / "model_final.pth") == tmp_path / "config.yaml"


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is not None, reason="detectron2 is installed")
def test_missing_detectron2_raises_import_error_with_instructions(tmp_path):
    with pytest.raises(ImportError, match="not on PyPI"):
        Detectron2Detector(tmp_path / "config.yaml", tmp_path / "model_final.pth")


def test_detectron2_backend_detects_rgb_images(tmp_path):
    detectron2 = pytest.importorskip("detectron2")
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.DEVICE = "cpu"
    (tmp_path / "config.yaml").write_text(cfg.dump())
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    detector = Detectron2Detector(tmp_path / "config.yaml", tmp_path / "model_final.pth", score_threshold=0.0)
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    det = detector.detect(image)
    assert det.boxes_xyxy.shape[1] == 4 and detectron2 is not None
