"""The session overview contact sheet (sorterbot_cloud.overview)."""

from __future__ import annotations

import numpy as np
import pytest

from sorterbot_cloud.overview import (
    BACKGROUND_RGB,
    GROUP_COLOURS_RGB,
    THUMB_ASPECT_RANGE,
    UNASSIGNED_RGB,
    container_groups,
    group_colour,
    legend_lines,
    render_overview,
)


def _obj(object_id, cls, image_name, box, cluster_id=None, theta=10.0, r=300.0):
    return {
        "object_id": object_id, "class": cls, "cluster_id": cluster_id, "theta_deg": theta, "r_mm": r,
        "detections": [{"detection_id": object_id, "image_name": image_name, "box_xyxy": box, "score": 0.9}],
    }


def _command(item, container, cluster_id):
    return {"pick": {"object_id": item}, "place": {"object_id": container}, "cluster_id": cluster_id}


@pytest.fixture
def result():
    return {
        "arm_id": "ARM001", "session_id": "s1", "mode": "calibrated", "reason": None,
        "objects": [
            _obj(0, "item", "1000.jpg", [20, 20, 60, 60], cluster_id=0),
            _obj(1, "item", "1050.jpg", [100, 30, 140, 70], cluster_id=1),
            _obj(2, "container", "1000.jpg", [120, 100, 190, 170], theta=-20.0, r=250.0),
            _obj(3, "container", "1050.jpg", [10, 100, 80, 170]),
            _obj(4, "container", "1050.jpg", [200, 100, 260, 170]),
        ],
        "commands": [_command(0, 2, 0), _command(1, 3, 1)],
    }


@pytest.fixture
def frames():
    grey = np.full((180, 280, 3), 90, np.uint8)
    return [("1000.jpg", grey.copy()), ("1050.jpg", grey.copy())]


def test_container_groups_come_from_commands(result):
    assert container_groups(result) == {2: [0], 3: [1]}


def test_legend_says_which_container_each_group_goes_to(result):
    lines = legend_lines(result)
    texts = [t for _, t in lines]
    assert "2 items, 3 containers, 2 commands" in texts[0]
    assert texts[1] == "group 0: I0 -> C2 (theta -20.0 deg, r 250 mm)"
    assert texts[2].startswith("group 1: I1 -> C3")
    assert [c for c, _ in lines[1:]] == [GROUP_COLOURS_RGB[0], GROUP_COLOURS_RGB[1]]


def test_legend_shows_reason_of_empty_plan(result):
    result = dict(result, commands=[], reason="no container was detected")
    assert legend_lines(result)[-1] == (None, "no commands: no container was detected")


def test_boxes_are_drawn_in_group_colours(result, frames):
    thumb = 280  # no scaling: box pixels stay where they are
    sheet = render_overview(frames, result, thumb_width_px=thumb, columns=2)
    pad = 6
    # item 0 (group 0) on frame 0: its left edge at x=20, y in 20..60
    assert tuple(sheet[pad + 40, pad + 20]) == GROUP_COLOURS_RGB[0]
    # container 2 receives group 0: same colour; container 4 receives nothing: white
    assert tuple(sheet[pad + 140, pad + 120]) == GROUP_COLOURS_RGB[0]
    x0_second = pad + thumb + pad
    assert tuple(sheet[pad + 140, x0_second + 260]) == UNASSIGNED_RGB
    assert tuple(sheet[pad + 50, x0_second + 100]) == GROUP_COLOURS_RGB[1]
    # untouched table pixels keep the frame's grey
    assert tuple(sheet[pad + 90, pad + 240]) == (90, 90, 90)


@pytest.mark.parametrize(("n_frames", "columns", "grid"), [(1, None, (1, 1)), (4, None, (2, 2)), (20, None, (4, 5)), (3, 1, (3, 1))],
                         ids=["one", "four", "twenty", "one-column"])
def test_sheet_size_follows_the_grid(result, n_frames, columns, grid):
    frames = [(f"{1000 + 50 * i}.jpg", np.zeros((120, 160, 3), np.uint8)) for i in range(n_frames)]
    sheet = render_overview(frames, result, thumb_width_px=80, columns=columns)
    rows, cols = grid
    assert sheet.shape[1] == cols * (80 + 6) + 6
    assert sheet.shape[0] > rows * (60 + 6)
    assert sheet.dtype == np.uint8 and sheet.shape[2] == 3


def test_group_colour_cycles_and_none_is_white():
    assert group_colour(None) == UNASSIGNED_RGB
    assert group_colour(len(GROUP_COLOURS_RGB)) == GROUP_COLOURS_RGB[0]


def test_bad_frame_is_rejected(result):
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\) uint8"):
        render_overview([("1000.jpg", np.zeros((10, 10), np.uint8))], result)


@pytest.mark.parametrize("shape_hw", [(40960, 40), (40, 40960)], ids=["tall", "wide"])
def test_thumbnails_of_absurd_frames_stay_bounded(result, shape_hw):
    """A 40 x 40960 frame (stored before ingest bounded the aspect) gives a small sheet."""
    thumb_w = 80
    frames = [("1000.jpg", np.full((*shape_hw, 3), 200, np.uint8)), ("1050.jpg", np.zeros((60, 80, 3), np.uint8))]
    sheet = render_overview(frames, result, thumb_width_px=thumb_w, columns=2)
    pad, line_h = 6, 22
    legend_h = 2 * pad + line_h * len(legend_lines(result))
    assert sheet.shape[1] == 2 * (thumb_w + pad) + pad
    assert sheet.shape[0] <= pad + int(thumb_w * THUMB_ASPECT_RANGE[1]) + pad + legend_h
    assert sheet.shape[0] >= pad + int(thumb_w * THUMB_ASPECT_RANGE[0]) + pad + legend_h


def test_frames_keep_their_aspect_in_their_cell(result):
    thumb_w = 100
    frames = [("1000.jpg", np.zeros((75, 100, 3), np.uint8)), ("1050.jpg", np.full((150, 100, 3), 200, np.uint8))]
    sheet = render_overview(frames, result, thumb_width_px=thumb_w, columns=2)
    pad = 6
    x0 = pad + thumb_w + pad
    cell = sheet[pad : pad + 75, x0 : x0 + thumb_w]
    # the tall frame is scaled to the cell's 75 rows, so 50 columns wide; the rest is background
    assert tuple(cell[10, 40]) == (200, 200, 200)
    assert tuple(cell[10, 60]) == BACKGROUND_RGB
