"""adapt-detector: folds, the held-out report, the written detector, the command line (a tiny detector, toy frames)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sorterbot_cloud.detection.adapt import AdaptConfig, adapt_detector, format_report, records_to_coco
from sorterbot_cloud.detection.data import load_coco
from sorterbot_cloud.detection.torchvision_detector import DetectorConfig, TorchvisionDetector
from sorterbot_cloud.detection.toydata import write_toy_coco
from sorterbot_cloud.evaluation import fold_indices

torch.set_num_threads(1)

TINY = DetectorConfig(backbone="mobilenet_v3_small", fpn_channels=32, box_head_units=64, min_size_px=120,
                      max_size_px=160, anchor_sizes_px=((8, 12, 16), (24, 32, 48), (64, 96, 128), (160, 200, 256)),
                      rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                      rpn_batch_size_per_image=64, box_batch_size_per_image=32)
#: a few seconds of training per run
FAST = dict(time_budget_min=0.04, synth_frames_per_frame=2, crop_px=128, threads=1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    ann = write_toy_coco(root / "frames", n_images=6, seed=3)
    weights = TorchvisionDetector.untrained(TINY).save(root / "base.pt", {"recipe": "untrained (test)"})
    return ann, weights


def test_fold_indices_partition_every_frame_once():
    parts = fold_indices(7, 3, seed=1)
    assert len(parts) == 3 and sorted(np.concatenate(parts).tolist()) == list(range(7))
    assert {len(p) for p in parts} <= {2, 3}
    assert [p.tolist() for p in fold_indices(7, 3, seed=1)] == [p.tolist() for p in parts]
    with pytest.raises(ValueError, match="2 <= folds <= items"):
        fold_indices(3, 4)


def test_records_to_coco_round_trips(toy, tmp_path):
    ann, _ = toy
    records = load_coco(ann, ann.parent)
    spec = records_to_coco(records, tmp_path / "c.json", ("item", "container"))
    again = load_coco(spec.annotations, spec.images_dir)
    assert [r.path.resolve() for r in again] == [r.path.resolve() for r in records]
    for a, b in zip(again, records, strict=True):
        np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-4)
        assert a.class_ids.tolist() == b.class_ids.tolist()


def test_kfold_adaptation_scores_every_frame_and_writes_the_final_model(toy, tmp_path):
    ann, weights = toy
    records = load_coco(ann, ann.parent)
    lines = []
    report = adapt_detector(records, weights, tmp_path / "out", AdaptConfig(**FAST), log=lines.append)
    assert (report.frames, report.folds, report.heldout_frames) == (6, 3, 6)
    assert set(report.ap50_before) == {"item", "container"} and set(report.ap50_after) == {"item", "container"}
    assert all(0.0 <= v <= 1.0 for v in report.ap50_after.values())
    assert sum("fine-tuning on 4 frames" in line for line in lines) == 3, "each fold model trains on the other 4"
    assert sum("fine-tuning on 6 frames" in line for line in lines) == 1, "the final model trains on all 6"
    out = tmp_path / "out"
    adapted = TorchvisionDetector.load(out / "detector.pt")
    base = TorchvisionDetector.load(weights)
    changed = [k for k, v in adapted.model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, base.model.state_dict()[k])]
    assert changed, "the written weights are the fine-tuned ones, not the start"
    meta = json.loads((out / "detector.json").read_text())
    assert meta["metrics"]["adapt"]["folds"] == 3 and meta["adapted_from"] == str(weights)
    assert json.loads((out / "report.json").read_text())["heldout_frames"] == 6
    assert not (out / "work").exists()
    text = format_report(report)
    assert "3-fold" in text and "AP50 item: before" in text and "DETECTOR_WEIGHTS=" in text


def test_one_split_holds_out_a_quarter(toy, tmp_path):
    ann, weights = toy
    records = load_coco(ann, ann.parent)
    report = adapt_detector(records, weights, tmp_path / "one", AdaptConfig(folds=1, **FAST), log=lambda _: None)
    assert (report.folds, report.heldout_frames) == (1, 2)  # round(0.25 * 6)


def test_adaptation_rejects_what_it_cannot_use(toy, tmp_path):
    ann, weights = toy
    records = load_coco(ann, ann.parent)
    with pytest.raises(ValueError, match="at least 2 labelled frames"):
        adapt_detector(records[:1], weights, tmp_path / "x", AdaptConfig(**FAST))
    with pytest.raises(FileNotFoundError, match="weights not found"):
        adapt_detector(records, tmp_path / "missing.pt", tmp_path / "x", AdaptConfig(**FAST))
    empty = [r.__class__(r.path, r.image_id, r.width_px, r.height_px, np.zeros((0, 4), np.float32),
                         np.zeros(0, np.int64)) for r in records]
    with pytest.raises(ValueError, match="none of the labelled frames holds a box"):
        adapt_detector(empty, weights, tmp_path / "x", AdaptConfig(**FAST))


def _write_voc(toy_ann, out_dir):
    """The toy frames as labelImg would save them (1-based inclusive boxes), items named 'bolt'."""
    import shutil

    data = json.loads(toy_ann.read_text())
    out_dir.mkdir()
    for img in data["images"]:
        shutil.copy(toy_ann.parent / img["file_name"], out_dir / img["file_name"])
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = img["file_name"]
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(img["width"])
        ET.SubElement(size, "height").text = str(img["height"])
        for ann in data["annotations"]:
            if ann["image_id"] != img["id"]:
                continue
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = "bolt" if ann["category_id"] == 1 else "tray"
            x, y, w, h = ann["bbox"]
            bb = ET.SubElement(obj, "bndbox")
            for k, v in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
                ET.SubElement(bb, k).text = str(int(round(v)))
        ET.ElementTree(root).write(out_dir / (img["file_name"].rsplit(".", 1)[0] + ".xml"))


def test_adapt_detector_cli_with_voc(toy, tmp_path):
    from sorterbot_cloud.detection.cli import adapt_detector_command

    ann, weights = toy
    voc = tmp_path / "voc"
    _write_voc(ann, voc)
    out = tmp_path / "cli"
    result = CliRunner().invoke(adapt_detector_command, [
        "--voc", str(voc), "--out", str(out), "--weights", str(weights), "--class-map", "tray=container",
        "--time-budget-min", "0.04", "--folds", "0", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (out / "detector.pt").is_file()
    labels = json.loads((out / "labels.json").read_text())
    assert {a["category_id"] for a in labels["annotations"]} == {1, 2}, "bolts are items, trays containers"


def test_adapt_detector_cli_needs_exactly_one_source(toy, tmp_path):
    from sorterbot_cloud.detection.cli import adapt_detector_command

    _, weights = toy
    result = CliRunner().invoke(adapt_detector_command, ["--out", str(tmp_path / "o"), "--weights", str(weights)])
    assert result.exit_code == 2 and "exactly one of --voc" in result.output
