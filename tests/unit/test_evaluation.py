"""Evaluation: hand-made ground truth and results whose scores are known."""

from __future__ import annotations

import copy

import pytest

from sorterbot_cloud import evaluation
from sorterbot_cloud.errors import BadRequest

# Two frames; containers 10 and 11, items 1, 2 (type "coin") and 3, 4 (type "cube").
TRUE_OBJECTS = [
    {"object_id": 10, "class": "container", "type": "bowl", "x_mm": 300.0, "y_mm": -100.0},
    {"object_id": 11, "class": "container", "type": "tray", "x_mm": 300.0, "y_mm": 100.0},
    {"object_id": 1, "class": "item", "type": "coin", "x_mm": 200.0, "y_mm": -50.0},
    {"object_id": 2, "class": "item", "type": "coin", "x_mm": 220.0, "y_mm": 0.0},
    {"object_id": 3, "class": "item", "type": "cube", "x_mm": 240.0, "y_mm": 50.0},
    {"object_id": 4, "class": "item", "type": "cube", "x_mm": 260.0, "y_mm": 20.0},
]
# box of each object on each frame: frame A shifts boxes right by 100 px
BOXES = {10: (100, 100, 300, 250), 11: (900, 100, 1100, 250), 1: (300, 600, 340, 640), 2: (450, 600, 490, 640), 3: (600, 600, 640, 640), 4: (750, 600, 790, 640)}
FRAMES = ["1200.jpg", "1250.jpg"]


def _box(object_id, frame):
    x0, y0, x1, y1 = BOXES[object_id]
    dx = 100 * FRAMES.index(frame)
    return [x0 + dx, y0, x1 + dx, y1]


def ground_truth() -> dict:
    cls = {o["object_id"]: o for o in TRUE_OBJECTS}
    return {
        "arm_id": "ARM001",
        "session_id": "s1",
        "objects": copy.deepcopy(TRUE_OBJECTS),
        "frames": [
            {
                "image_name": f,
                "pw0": float(f[:4]),
                "width_px": 1640,
                "height_px": 1232,
                "boxes": [{"object_id": i, "class": cls[i]["class"], "type": cls[i]["type"], "box_xyxy": _box(i, f), "visible_fraction": 1.0} for i in BOXES],
            }
            for f in FRAMES
        ],
    }


def found_object(found_id, true_id, cluster_id=None, dx_mm=0.0, frames=FRAMES, jitter_px=3):
    true = next(o for o in TRUE_OBJECTS if o["object_id"] == true_id)
    return {
        "object_id": found_id,
        "class": true["class"],
        "x_mm": true["x_mm"] + dx_mm,
        "y_mm": true["y_mm"],
        "cluster_id": cluster_id,
        "detections": [
            {"detection_id": 100 * found_id + k, "image_name": f, "box_xyxy": [v + jitter_px for v in _box(true_id, f)], "score": 0.9}
            for k, f in enumerate(frames)
        ],
    }


def command(pick_id, place_id, cluster_id):
    return {"pick": {"object_id": pick_id}, "place": {"object_id": place_id}, "cluster_id": cluster_id}


def correct_result(mode="calibrated") -> dict:
    """Found ids: containers 0 (true 10), 1 (true 11); items 2..5 (true 1..4)."""
    objects = [found_object(0, 10, dx_mm=4.0), found_object(1, 11, dx_mm=-8.0)]
    objects += [found_object(2 + k, t, cluster_id=c, dx_mm=2.0) for k, (t, c) in enumerate([(1, 0), (2, 0), (3, 1), (4, 1)])]
    commands = [command(2, 0, 0), command(3, 0, 0), command(4, 1, 1), command(5, 1, 1)]
    return {"arm_id": "ARM001", "session_id": "s1", "mode": mode, "reason": None, "objects": objects, "commands": commands}


def test_correct_session():
    score = evaluation.score_session(ground_truth(), correct_result())
    assert score.counts_exact
    assert score.count_error == {"item": 0, "container": 0}
    assert score.matched == {0: 10, 1: 11, 2: 1, 3: 2, 4: 3, 5: 4}
    assert score.position_errors_mm == pytest.approx([4.0, 8.0, 2.0, 2.0, 2.0, 2.0])
    assert score.position_median_mm == pytest.approx(2.0)
    assert score.position_errors_by_class_mm["container"] == pytest.approx([4.0, 8.0])
    assert score.position_errors_by_class_mm["item"] == pytest.approx([2.0] * 4)
    assert score.ari == pytest.approx(1.0)
    assert score.sorted_correctly, score.problems


def test_split_type_is_not_sorted_correctly():
    result = correct_result()
    result["objects"][3]["cluster_id"] = 1  # true item 2 (coin) grouped with the cubes
    result["commands"][1] = command(3, 1, 1)
    score = evaluation.score_session(ground_truth(), result)
    assert score.counts_exact
    assert not score.sorted_correctly
    assert any("'coin' is split" in p for p in score.problems)
    assert any("receives 2 types" in p for p in score.problems)
    assert score.ari < 1.0


def test_missed_item():
    result = correct_result()
    result["objects"] = [o for o in result["objects"] if o["object_id"] != 5]
    result["commands"] = result["commands"][:3]
    score = evaluation.score_session(ground_truth(), result)
    assert score.count_error == {"item": -1, "container": 0}
    assert not score.counts_exact
    assert score.missed == [4]
    assert not score.sorted_correctly
    assert any("[4] were not found" in p for p in score.problems)


def test_duplicate_object():
    result = correct_result()
    # true item 1 also found as object 6 from its second frame only
    result["objects"].append(found_object(6, 1, cluster_id=0, frames=FRAMES[1:]))
    result["commands"].append(command(6, 0, 0))
    score = evaluation.score_session(ground_truth(), result)
    assert score.count_error == {"item": 1, "container": 0}
    assert score.duplicates == [1]
    assert not score.sorted_correctly
    assert any("found more than once" in p for p in score.problems)


def test_spurious_object_and_command():
    result = correct_result()
    ghost = found_object(6, 1, cluster_id=0)
    for det in ghost["detections"]:
        det["box_xyxy"] = [1400, 1000, 1440, 1040]  # matches nothing
    result["objects"].append(ghost)
    result["commands"].append(command(6, 0, 0))
    score = evaluation.score_session(ground_truth(), result)
    assert score.spurious == [6]
    assert not score.sorted_correctly
    assert any("not a true item" in p for p in score.problems)


def test_fewer_containers_than_types_may_share():
    gt = ground_truth()
    gt["objects"] = [o for o in gt["objects"] if o["object_id"] != 11]
    for frame in gt["frames"]:
        frame["boxes"] = [b for b in frame["boxes"] if b["object_id"] != 11]
    result = correct_result()
    result["objects"] = [o for o in result["objects"] if o["object_id"] != 1]
    for o in result["objects"]:
        if o["class"] == "item":
            o["cluster_id"] = 0
    result["commands"] = [command(k, 0, 0) for k in range(2, 6)]
    score = evaluation.score_session(gt, result)
    assert score.sorted_correctly, score.problems
    assert score.ari == pytest.approx(0.0)


def test_legacy_mode_has_no_position_errors():
    score = evaluation.score_session(ground_truth(), correct_result(mode="legacy"))
    assert score.position_errors_mm == []
    assert score.position_errors_by_class_mm == {"item": [], "container": []}
    assert score.position_p95_mm is None
    assert score.sorted_correctly


def test_low_iou_detections_do_not_vote():
    result = correct_result()
    for det in result["objects"][2]["detections"]:
        det["box_xyxy"] = [v + 25 for v in det["box_xyxy"]]  # 40 px box shifted 28 px: IoU < 0.5
    score = evaluation.score_session(ground_truth(), result)
    assert 2 not in score.matched
    assert score.missed == [1]


def test_aggregate():
    good = evaluation.score_session(ground_truth(), correct_result())
    bad_result = correct_result()
    bad_result["objects"] = [o for o in bad_result["objects"] if o["object_id"] != 5]
    bad_result["commands"] = bad_result["commands"][:3]
    bad = evaluation.score_session(ground_truth(), bad_result)
    agg = evaluation.aggregate([good, bad])
    assert agg.n_sessions == 2
    assert agg.share_counts_exact == pytest.approx(0.5)
    assert agg.share_sorted_correctly == pytest.approx(0.5)
    assert agg.position_median_mm == pytest.approx(2.0)
    assert agg.mean_ari == pytest.approx((good.ari + bad.ari) / 2)
    # containers 4 and 8 mm off in both sessions (p95 of 4, 4, 8, 8 is 8), items all 2 mm
    assert agg.position_p95_by_class_mm["container"] == pytest.approx(8.0)
    assert agg.position_p95_by_class_mm["item"] == pytest.approx(2.0)
    assert evaluation.aggregate([]).share_counts_exact == 0.0
    assert evaluation.aggregate([]).position_p95_by_class_mm == {"item": None, "container": None}


@pytest.mark.parametrize("drop, match", [("objects", "objects"), ("commands", "commands")], ids=["no-objects", "no-commands"])
def test_malformed_result_raises(drop, match):
    result = correct_result()
    del result[drop]
    with pytest.raises(BadRequest, match=match):
        evaluation.score_session(ground_truth(), result)


def test_score_to_dict_is_json_ready():
    import json

    score = evaluation.score_session(ground_truth(), correct_result())
    data = json.loads(json.dumps(score.to_dict()))
    assert data["matched"]["2"] == 1
    assert data["sorted_correctly"] is True


def test_result_to_dict_round_trips_through_score_session():
    """The pipeline's own objects and commands, written by result_to_dict, score as correct."""
    import numpy as np

    from sorterbot_cloud.structures import ArmObject, Command, PolarPoint, StoredDetection

    dets, objects = [], []
    for found_id, true_id in enumerate([10, 11, 1, 2, 3, 4]):
        ids = []
        for f in FRAMES:
            dets.append(StoredDetection(len(dets), f, float(f[:4]), 1640, 1232, np.array(_box(true_id, f), np.float32), 0.9, 1 if true_id >= 10 else 0))
            ids.append(len(dets) - 1)
        t = next(o for o in TRUE_OBJECTS if o["object_id"] == true_id)
        objects.append(ArmObject(found_id, 1 if true_id >= 10 else 0, PolarPoint(1.0, 2.0, 1500.0, 1600.0), t["x_mm"] + 1, t["y_mm"], 30.0, 0.9, ids))
    clusters = {2: 0, 3: 0, 4: 1, 5: 1}
    commands = [Command(objects[i], objects[0 if clusters[i] == 0 else 1], clusters[i]) for i in (2, 3, 4, 5)]
    result = evaluation.result_to_dict(objects, commands, "calibrated", None, dets, clusters, "ARM001", "s1")
    assert result["commands"][0]["pick"] == {"object_id": 2, "pw0": 1500.0, "pw1": 1600.0, "r_mm": 1.0, "theta_deg": 2.0}
    assert result["objects"][2]["cluster_id"] == 0 and result["objects"][0]["cluster_id"] is None
    score = evaluation.score_session(ground_truth(), result)
    assert score.sorted_correctly, score.problems
    assert score.position_errors_mm == pytest.approx([1.0] * 6)


@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "legacy"])
def test_oracle_session_end_to_end(calibrated):
    """Simulator ground-truth boxes with noise through geometry, dedup, grouping and planning."""
    truth, constants, detections = evaluation.oracle_session(1002, calibrated)  # 1001 no longer lays out (scene version 2)
    result = evaluation.run_trigger_core(constants, detections)
    score = evaluation.score_session(truth, result)
    assert score.counts_exact, score.count_error
    assert score.sorted_correctly, score.problems
    if calibrated:
        assert score.position_p95_mm < 15.0
    else:
        assert score.position_errors_mm == []
