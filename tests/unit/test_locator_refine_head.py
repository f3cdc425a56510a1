"""The second box-regression stage: its start, its training samples, its training run and file."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from sorterbot_cloud.detection.data import DatasetSpec
from sorterbot_cloud.detection.refine_training import train_refine_head, training_samples
from sorterbot_cloud.detection.torchvision_detector import DetectorConfig, TorchvisionDetector, build_model
from sorterbot_cloud.detection.toydata import write_toy_coco

torch.set_num_threads(1)

TINY = DetectorConfig(backbone="mobilenet_v3_small", fpn_channels=32, box_head_units=64, min_size_px=120,
                      max_size_px=160, anchor_sizes_px=((8, 12, 16), (24, 32, 48), (64, 96, 128), (160, 200, 256)),
                      score_threshold=0.0, detections_per_image=20, rpn_post_nms_top_n_test=100, box_refine_steps=0)


@pytest.fixture(scope="module")
def tiny_detector() -> TorchvisionDetector:
    torch.manual_seed(0)
    return TorchvisionDetector.untrained(TINY)


def test_a_fresh_refine_head_equals_reapplying_the_box_head(tiny_detector):
    """Copied from the first stage with its deltas rescaled to the tighter coder, the refine
    head moves boxes exactly as re-applying the box head does (so training starts there)."""
    config = replace(TINY, refine_head=True, box_refine_steps=1)
    model = build_model(config)
    missing, unexpected = model.load_state_dict(tiny_detector.model.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("refine_head.") for k in missing)
    model.refine_head.init_from_first_stage(model.roi_heads.box_head, model.roi_heads.box_predictor.bbox_pred)
    with_head = TorchvisionDetector(model, config)
    reapplied = TorchvisionDetector(tiny_detector.model, replace(TINY, box_refine_steps=1))
    plain = tiny_detector
    image = np.random.default_rng(2).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    a, b, c = with_head.detect(image), reapplied.detect(image), plain.detect(image)
    assert len(a) > 0
    np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-3)
    np.testing.assert_array_equal(a.scores, c.scores)
    assert np.abs(a.boxes_xyxy - c.boxes_xyxy).max() > 0.01


def test_training_samples_keep_boxes_over_the_iou_bar_and_the_true_boxes():
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 260.0, 260.0]])
    labels = torch.tensor([1, 2])
    boxes = torch.tensor([
        [0.0, 0.0, 100.0, 90.0],      # IoU 0.90 with gt 0
        [0.0, 0.0, 100.0, 55.0],      # IoU 0.55: under the bar
        [205.0, 200.0, 265.0, 260.0],  # IoU 0.85 with gt 1
        [400.0, 400.0, 450.0, 450.0],  # background
    ])
    gen = torch.Generator().manual_seed(0)
    got, matched, got_labels = training_samples(boxes, gt, labels, 0.6, 10, gen)
    assert len(got) == 4  # two first-stage boxes + the two true boxes
    order = torch.argsort(got[:, 0] * 1000 + got[:, 3])
    torch.testing.assert_close(matched[order], gt[[0, 0, 1, 1]])
    assert got_labels[order].tolist() == [1, 1, 2, 2]
    capped = training_samples(boxes, gt, labels, 0.6, 3, gen)
    assert len(capped[0]) == 3
    empty = training_samples(boxes, gt[:0], labels[:0], 0.6, 10, gen)
    assert len(empty[0]) == 0 and empty[0].shape == (0, 4)


def test_training_moves_only_the_refine_head_and_writes_a_refining_detector(tmp_path, tiny_detector):
    toy = write_toy_coco(tmp_path / "toy", n_images=4, seed=1)
    first = tiny_detector.save(tmp_path / "first.pt")
    path = train_refine_head(first, [DatasetSpec(toy, toy.parent)], tmp_path / "run", iterations=6, batch_size=2,
                             lr=1e-3, crop_px=128, log_every=2, recipe="pytest")
    rows = [json.loads(line) for line in (tmp_path / "run" / "refine_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 and r["samples_per_image"] > 0 for r in rows)
    trained = TorchvisionDetector.load(path)
    assert trained.config.refine_head and trained.config.box_refine_steps == 1
    assert json.loads(path.with_suffix(".json").read_text())["refine_head"]["recipe"] == "pytest"
    before = TorchvisionDetector.load(first).model.state_dict()
    after = trained.model.state_dict()
    for name, value in before.items():  # the first stage is frozen (fp16 file: compare as stored)
        torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)
    fresh = build_model(trained.config)
    fresh.load_state_dict(before, strict=False)
    fresh.refine_head.init_from_first_stage(fresh.roi_heads.box_head, fresh.roi_heads.box_predictor.bbox_pred)
    start = fresh.refine_head.bbox_pred.weight.half().float()
    assert (trained.model.refine_head.bbox_pred.weight - start).abs().max() > 1e-4
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    assert len(trained.fuse().detect(image)) > 0


def test_background_samples_are_boxes_on_no_object_taught_to_stay():
    from sorterbot_cloud.detection.refine_training import background_samples

    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    boxes = torch.tensor([[0.0, 0.0, 100.0, 90.0], [150.0, 150.0, 200.0, 200.0], [80.0, 80.0, 180.0, 180.0]])
    labels = torch.tensor([1, 2, 1])
    gen = torch.Generator().manual_seed(0)
    got, targets, got_labels = background_samples(boxes, labels, gt, 0.3, 10, gen)
    assert got.tolist() == [[150.0, 150.0, 200.0, 200.0], [80.0, 80.0, 180.0, 180.0]]  # IoU 0 and 0.02
    torch.testing.assert_close(targets, got)
    assert got_labels.tolist() == [2, 1]
    assert len(background_samples(boxes, labels, gt, 0.3, 1, gen)[0]) == 1
    assert len(background_samples(boxes, labels, gt, 0.3, 0, gen)[0]) == 0
    assert len(background_samples(boxes, labels, gt[:0], 0.3, 10, gen)[0]) == 3  # no object: all background
