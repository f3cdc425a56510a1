import numpy as np
import pytest

from sorterbot_cloud.structures import (
    CLASS_NAMES,
    ArmObject,
    Command,
    Detections,
    Frame,
    PolarPoint,
    box_areas,
    class_id_of,
    class_name,
    pairwise_ioa,
    pairwise_iou,
    pulse_width_of_image_name,
)


def test_detections_normalises_dtypes_and_shapes():
    dets = Detections([[1, 2, 3, 4], [5, 6, 7, 8]], [0.5, 0.9], [0, 1])
    assert dets.boxes_xyxy.dtype == np.float32 and dets.boxes_xyxy.shape == (2, 4)
    assert dets.scores.dtype == np.float32 and dets.class_ids.dtype == np.int64
    assert len(dets) == 2
    np.testing.assert_allclose(dets.centers_xy, [[2, 3], [6, 7]])


def test_detections_empty_and_selection():
    assert len(Detections.empty()) == 0
    dets = Detections([[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 1, 1]], [0.5, 0.9, 0.1], [0, 1, 0])
    sel = dets[dets.scores > 0.4]
    assert len(sel) == 2 and sel.class_ids.tolist() == [0, 1]
    assert len(dets[1]) == 1


@pytest.mark.parametrize(
    "boxes, scores, class_ids, match",
    [
        ([[1, 2, 3]], [0.5], [0], r"shape \(N, 4\)"),
        ([[1, 2, 3, 4]], [0.5, 0.4], [0], r"must have shape \(1,\)"),
        ([[3, 2, 1, 4]], [0.5], [0], "x_max >= x_min"),
        ([[1, 2, 3, 4]], [1.5], [0], r"\[0, 1\]"),
        ([[1, 2, 3, 4]], [0.5], [2], "class_ids"),
        ([[np.nan, 2, 3, 4]], [0.5], [0], "finite"),
    ],
    ids=["three-columns", "score-count", "inverted-box", "score-range", "unknown-class", "nan"],
)
def test_detections_rejects_bad_input(boxes, scores, class_ids, match):
    with pytest.raises(ValueError, match=match):
        Detections(boxes, scores, class_ids)


def test_detection_records_are_json_ready():
    rec = Detections([[1, 2, 3, 4]], [0.5], [1]).to_records()
    assert rec == [{"class": "container", "class_id": 1, "box_xyxy": [1.0, 2.0, 3.0, 4.0], "score": 0.5}]


@pytest.mark.parametrize(
    "name, pw",
    [("1200.jpg", 1200.0), ("950.JPEG", 950.0), ("1475.5.png", 1475.5)],
    ids=["jpg", "upper-jpeg", "fraction-png"],
)
def test_pulse_width_of_image_name(name, pw):
    assert pulse_width_of_image_name(name) == pw


@pytest.mark.parametrize("name", ["../1200.jpg", "1200", "abc.jpg", "1200.gif", "", "1200.jpg/x", "1200.jpg\n"], ids=str)
def test_pulse_width_of_image_name_rejects(name):
    with pytest.raises(ValueError, match="image_name"):
        pulse_width_of_image_name(name)


def test_frame_validates_ids():
    frame = Frame("ARM001", "sess_2020_04_25__10_12_33", "1200.jpg", 1640, 1232)
    assert frame.pw0 == 1200.0
    with pytest.raises(ValueError, match="arm_id"):
        Frame("arm/../x", "s", "1200.jpg", 10, 10)
    with pytest.raises(ValueError, match="session_id"):
        Frame("A", "x" * 65, "1200.jpg", 10, 10)
    with pytest.raises(ValueError, match="session_id"):
        Frame("A", "s1\n", "1200.jpg", 10, 10)
    with pytest.raises(ValueError, match="image_name"):
        Frame("A", "s1", "1200.jpg\n", 10, 10)
    with pytest.raises(ValueError, match="positive"):
        Frame("A", "s", "1200.jpg", 0, 10)


def test_class_names_round_trip():
    for i, name in enumerate(CLASS_NAMES):
        assert class_id_of(name) == i and class_name(i) == name
    with pytest.raises(ValueError):
        class_id_of("bottle")
    with pytest.raises(ValueError):
        class_name(7)


def test_command_wire_format():
    item = ArmObject(0, 0, PolarPoint(200.0, 10.0, 1582.345, 1433.333), 0, 0, 20, 0.9)
    box = ArmObject(1, 1, PolarPoint(300.0, -5.0, 1421.0, 1666.0), 0, 0, 150, 0.9)
    assert Command(item, box, 0).to_wire() == [[1582.35, 1433.33], [1421.0, 1666.0]]


def test_pairwise_iou_known_values_and_shapes():
    iou = pairwise_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])
    np.testing.assert_allclose(pairwise_iou([0, 0, 10, 10], [[5, 0, 15, 10]]), [[50 / 150]])
    assert pairwise_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert pairwise_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]]).tolist() == [[0.0]]  # empty union


def test_pairwise_ioa_divides_by_the_second_boxes_area():
    ioa = pairwise_ioa([[0, 0, 20, 20]], [[0, 0, 10, 10], [10, 0, 30, 10], [5, 5, 5, 5]])
    np.testing.assert_allclose(ioa, [[1.0, 0.5, 0.0]])
    np.testing.assert_allclose(pairwise_ioa([[0, 0, 10, 10]], [[0, 0, 20, 20]]), [[0.25]])


def test_box_areas_clip_inverted_sides():
    np.testing.assert_allclose(box_areas([[0, 0, 2, 3], [5, 5, 4, 9]]), [6.0, 0.0])


@pytest.mark.parametrize("bad", [[[0, 0, 1]], np.zeros((2, 2, 4)), [1, 2, 3]])
def test_pairwise_box_functions_reject_bad_shapes(bad):
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        pairwise_iou(bad, [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        pairwise_ioa([[0, 0, 1, 1]], bad)
