"""Detection metrics on hand-made predictions with known values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sorterbot_cloud.detection.data import Record
from sorterbot_cloud.detection.evaluate import (
    box_errors_by_texture,
    box_errors_by_type,
    box_side_errors,
    coco_ap,
    confusion_at_threshold,
    recall_margins,
    write_report,
)
from sorterbot_cloud.structures import Detections


def record(image_id, boxes, classes):
    return Record(Path(f"{image_id}.jpg"), image_id, 200, 100, np.asarray(boxes, np.float32).reshape(-1, 4),
                  np.asarray(classes, np.int64))


GT = [
    record(1, [[10, 10, 30, 30], [50, 10, 70, 40], [100, 20, 180, 90]], [0, 0, 1]),
    record(2, [[20, 20, 40, 40], [110, 10, 190, 80]], [0, 1]),
]


def perfect():
    return [Detections(r.boxes_xyxy, np.full(len(r.boxes_xyxy), 0.9), r.class_ids) for r in GT]


def test_perfect_predictions_give_ap_one():
    metrics = coco_ap(GT, perfect())
    assert metrics["ap50_per_class"] == {"item": pytest.approx(1.0), "container": pytest.approx(1.0)}
    assert metrics["map"] == pytest.approx(1.0)


def test_third_recall_gives_34_of_101_points():
    """1 of 3 items found, no false positive: precision 1 up to recall 1/3 -> 34 of 101 recall points."""
    preds = perfect()
    preds[0] = Detections(GT[0].boxes_xyxy[[0, 2]], [0.9, 0.9], [0, 1])
    preds[1] = Detections(GT[1].boxes_xyxy[[1]], [0.9], [1])
    metrics = coco_ap(GT, preds)
    assert metrics["ap50_per_class"]["item"] == pytest.approx(34 / 101)
    assert metrics["ap50_per_class"]["container"] == pytest.approx(1.0)


def test_false_positive_ranked_first_halves_precision():
    """A wrong container box scored above both true ones: precision 1/2 at recall 0.5, 2/3 at recall 1."""
    preds = perfect()
    preds[0] = Detections(np.vstack([GT[0].boxes_xyxy, [[0, 60, 40, 99]]]), [0.9, 0.9, 0.8, 0.95], [0, 0, 1, 1])
    metrics = coco_ap(GT, preds)
    # interpolated precision is 2/3 at every recall point up to 1 (101 points)
    assert metrics["ap50_per_class"]["container"] == pytest.approx(2 / 3)
    assert metrics["ap50_per_class"]["item"] == pytest.approx(1.0)


def test_no_predictions_give_zero_ap():
    metrics = coco_ap(GT, [Detections.empty(), Detections.empty()])
    assert metrics["ap50_per_class"] == {"item": 0.0, "container": 0.0}


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="one prediction per record"):
        coco_ap(GT, [Detections.empty()])


def test_confusion_matrix_with_background():
    preds = [
        # item 1 found, item 2 missed, container called item, one false item on background
        Detections([[10, 10, 30, 30], [100, 20, 180, 90], [150, 0, 160, 5], [50, 10, 70, 40]],
                   [0.9, 0.8, 0.7, 0.3], [0, 0, 0, 0]),
        Detections([[20, 20, 40, 40], [110, 10, 190, 80]], [0.9, 0.9], [0, 1]),
    ]
    op = confusion_at_threshold(GT, preds, score_threshold=0.5)
    # rows true (item, container, background), columns predicted
    assert op["confusion_matrix"] == [[2, 0, 1], [1, 1, 0], [1, 0, 0]]
    assert op["labels"] == ["item", "container", "background"]
    item = op["per_class"]["item"]
    assert (item["tp"], item["fp"], item["fn"]) == (2, 2, 1)
    assert item["precision"] == pytest.approx(0.5) and item["recall"] == pytest.approx(2 / 3)
    assert item["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert op["per_class"]["container"]["recall"] == pytest.approx(0.5)


@pytest.mark.parametrize("threshold, expected_tp", [pytest.param(0.0, 5, id="all"), pytest.param(0.95, 0, id="none")])
def test_threshold_filters_detections(threshold, expected_tp):
    op = confusion_at_threshold(GT, perfect(), score_threshold=threshold)
    assert sum(v["tp"] for v in op["per_class"].values()) == expected_tp


def test_report_files_are_written(tmp_path):
    metrics = coco_ap(GT, perfect())
    metrics["operating_point"] = confusion_at_threshold(GT, perfect(), 0.5)
    paths = write_report(metrics, tmp_path, title="test")
    for key in ("pr_curve", "confusion_matrix"):
        assert Path(paths[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path(paths["metrics"]).read_text())["ap50_per_class"]["item"] == pytest.approx(1.0)


def test_box_side_errors_measure_matched_sides_and_skip_border_sides():
    """Width 200, height 100 frame. An item box shifted 2 px right and a container box
    whose true bottom is the frame's border (that side is left out)."""
    rec = record(0, [[20, 20, 60, 50], [100, 10, 180, 100]], [0, 1])
    det = Detections(np.float32([[22, 20, 62, 50], [104, 10, 180, 90], [0, 0, 10, 10]]), np.float32([0.9, 0.8, 0.95]),
                     np.int64([0, 1, 1]))
    out = box_side_errors([rec], [det], score_threshold=0.5)
    assert out["item"]["n"] == 1 and out["container"]["n"] == 1
    assert out["item"]["mean_abs_px_per_side"] == [2.0, 0.0, 2.0, 0.0]
    assert out["item"]["mean_abs_px"] == pytest.approx(1.0)
    assert out["item"]["mean_abs_rel"] == pytest.approx((2 / 40 + 2 / 40) / 4)
    assert out["container"]["mean_abs_px_per_side"][3] is None  # bottom on the border
    assert out["container"]["mean_abs_px"] == pytest.approx(4 / 3)
    low = box_side_errors([rec], [det], score_threshold=0.85)
    assert low["container"]["n"] == 0 and low["container"]["mean_abs_px"] is None


def test_box_errors_by_type_show_a_type_boxed_short():
    """Two dice whose tops are cut by 4 px (true height 20, detected 16), one die missed,
    a washer boxed exactly, and a die on the frame's bottom border (IoU counts, ratios do not)."""
    rec = Record(Path("0.jpg"), 0, 200, 100,
                 np.float32([[10, 10, 30, 30], [50, 10, 70, 30], [90, 10, 110, 30], [130, 10, 150, 30], [160, 80, 180, 100]]),
                 np.int64([0, 0, 0, 0, 0]), ("die", "die", "die", "washer", "die"))
    det = Detections(np.float32([[10, 14, 30, 30], [50, 14, 70, 30], [130, 10, 150, 30], [160, 84, 180, 100]]),
                     np.float32([0.9, 0.9, 0.9, 0.9]), np.int64([0, 0, 0, 0]))
    out = box_errors_by_type([rec], [det], score_threshold=0.5)
    assert list(out) == ["die", "washer"]
    die = out["die"]
    assert (die["n"], die["matched"], die["n_inner"]) == (4, 3, 2)
    assert die["iou_median"] == pytest.approx(0.8)
    assert die["height_ratio_median"] == pytest.approx(0.8)
    assert die["width_ratio_median"] == pytest.approx(1.0)
    assert out["washer"]["height_ratio_median"] == pytest.approx(1.0) and out["washer"]["iou_median"] == pytest.approx(1.0)
    # records without types (real photos) give nothing
    assert box_errors_by_type([record(1, [[10, 10, 30, 30]], [0])], [det], score_threshold=0.5) == {}


def test_load_coco_reads_object_types_and_the_table_texture(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "item"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "type": "die"},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 2, 10, 10]}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    from sorterbot_cloud.detection.data import load_coco

    (rec,) = load_coco(tmp_path / "a.json", tmp_path)
    assert rec.object_types == ("die", None) and rec.texture is None
    coco["annotations"][0].pop("type")
    coco["images"][0]["texture"] = "paper"
    (tmp_path / "a.json").write_text(json.dumps(coco))
    (rec,) = load_coco(tmp_path / "a.json", tmp_path)
    assert rec.object_types == () and rec.texture == "paper"


def test_box_errors_by_texture_separate_the_tables_a_type_is_boxed_short_on():
    """The same die, top cut by 4 px on a paper table and boxed exactly on wood; a container
    on paper keeps its own row; a photo (no texture) is skipped."""
    boxes, types = np.float32([[10, 10, 30, 30], [60, 10, 160, 90]]), ("die", "tray")
    paper = Record(Path("0.jpg"), 0, 200, 100, boxes, np.int64([0, 1]), types, "paper")
    wood = Record(Path("1.jpg"), 1, 200, 100, boxes, np.int64([0, 1]), types, "wood")
    photo = Record(Path("2.jpg"), 2, 200, 100, boxes, np.int64([0, 1]), types, None)
    short = Detections(np.float32([[10, 14, 30, 30], [60, 10, 160, 90]]), np.float32([0.9, 0.9]), np.int64([0, 1]))
    exact = Detections(boxes, np.float32([0.9, 0.9]), np.int64([0, 1]))
    out = box_errors_by_texture([paper, wood, photo], [short, exact, short], score_threshold=0.5)
    assert list(out) == ["paper/container", "paper/item", "wood/container", "wood/item"]
    assert out["paper/item"]["height_ratio_median"] == pytest.approx(0.8) and out["paper/item"]["n"] == 1
    assert out["wood/item"]["height_ratio_median"] == pytest.approx(1.0)
    assert out["paper/container"]["iou_median"] == pytest.approx(1.0)


def test_recall_margins_give_each_true_box_its_best_same_class_score():
    preds = [
        # item 1: two boxes (0.55 and 0.4); item 2: only a box of the wrong class; container: shifted (IoU < 0.5)
        Detections([[10, 10, 30, 30], [11, 10, 30, 31], [50, 10, 70, 40], [140, 20, 220, 90]],
                   [0.55, 0.4, 0.95, 0.99], [0, 0, 1, 1]),
        Detections([[20, 20, 40, 40], [110, 10, 190, 80]], [0.75, 0.92], [0, 1]),
    ]
    margins = recall_margins(GT, preds)
    item, container = margins["item"], margins["container"]
    assert item["n"] == 3 and container["n"] == 2
    assert item["lowest_best_scores"] == [0.0, 0.55, 0.75]
    assert item["found_at"] == {"0.3": 2, "0.5": 2, "0.7": 1, "0.9": 0}
    assert container["lowest_best_scores"] == [0.0, 0.92]
    assert container["found_at"]["0.9"] == 1


def test_recall_margins_without_predictions_and_lengths_checked():
    empty = [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in GT]
    margins = recall_margins(GT, empty, n_lowest=2)
    assert margins["item"]["found_at"]["0.3"] == 0 and margins["item"]["lowest_best_scores"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="records"):
        recall_margins(GT, empty[:1])
