"""Cut-paste frame synthesis: GrabCut cut-outs, backgrounds, procedural items, boxes that frame what was pasted."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sorterbot_cloud.detection import copy_paste as cp
from sorterbot_cloud.detection.data import Record, load_coco


def _board_photo(tmp_path, name="board.png"):
    """A green 'board' with dark chips on a pale speckled desk, and its box."""
    rng = np.random.default_rng(1)
    image = np.clip(rng.normal(215, 6, (240, 320, 3)), 0, 255).astype(np.uint8)
    image[80:160, 100:220] = (30, 140, 60)
    image[100:120, 120:150] = (20, 20, 20)
    path = tmp_path / name
    cv2.imwrite(str(path), image[..., ::-1])
    rec = Record(path, 1, 320, 240, np.float32([[100, 80, 220, 160]]), np.int64([0]))
    return image, rec


def test_grabcut_keeps_the_object_and_drops_the_desk(tmp_path):
    image, _ = _board_photo(tmp_path)
    # a loose box: 12 px of desk on every side of the board
    cut = cp.grabcut_cutout(image, [88, 68, 232, 172])
    assert cut.rgb.shape[:2] == cut.alpha.shape == (104, 144)
    board = cut.alpha[12:92, 12:132]
    desk = np.concatenate([cut.alpha[:6].ravel(), cut.alpha[-6:].ravel(), cut.alpha[:, :6].ravel()])
    assert board.mean() > 0.9, "the board (with its dark chip, a hole GrabCut may leave) is opaque"
    assert desk.mean() < 0.2, "the desk around it is transparent"


def test_grabcut_rejects_a_box_outside_the_image(tmp_path):
    image, _ = _board_photo(tmp_path)
    with pytest.raises(ValueError, match="too small or outside"):
        cp.grabcut_cutout(image, [400, 10, 450, 40])


def test_cutouts_from_records_reads_each_box(tmp_path):
    _, rec = _board_photo(tmp_path)
    cuts = cp.cutouts_from_records([rec, rec])
    assert len(cuts) == 2 and all(c.source == str(rec.path) for c in cuts)
    assert cuts[0].rgb.shape[:2] == (80, 120)


@pytest.mark.parametrize("family", [f for f in cp.BACKGROUND_FAMILIES])
def test_every_background_family_draws(family, tmp_path):
    _, rec = _board_photo(tmp_path)
    table = tmp_path / "table.png"
    cv2.imwrite(str(table), np.full((90, 160, 3), 200, np.uint8))
    img, got = cp.random_background(np.random.default_rng(0), 120, 200, family, real_records=[rec],
                                    table_frames=[table])
    assert img.shape == (120, 200, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert got == family


def test_real_photo_background_avoids_the_boxes(tmp_path):
    """A box-free region of the board photo never shows the board's green."""
    _, rec = _board_photo(tmp_path)
    for seed in range(10):
        img, family = cp.random_background(np.random.default_rng(seed), 60, 80, "real_photo", real_records=[rec])
        if family == "real_photo":
            green = (img[..., 1] > img[..., 0] + 0.2).mean()
            assert green < 0.02


@pytest.mark.parametrize("shape", cp.ITEM_SHAPES)
def test_procedural_items_are_opaque_shapes(shape):
    cut = cp.procedural_item(np.random.default_rng(3), 80, shape)
    assert cut.source == f"procedural:{shape}"
    assert cut.rgb.shape[:2] == cut.alpha.shape
    assert max(cut.alpha.shape) <= 80
    assert (cut.alpha > 0.5).mean() > 0.2


def test_composed_boxes_frame_the_pasted_pixels():
    """Paste pure-white items on a table darkened below white: each box is the white region's extent."""
    white = cp.Cutout(np.full((30, 40, 3), 255, np.uint8), np.ones((30, 40), np.float32), "white")
    n_boxes = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        image, boxes, info = cp.compose_frame(rng, [white], size_px=(320, 240), n_items=(1, 3), procedural_share=0.0)
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        assert boxes.shape[1] == 4 and len(info["sources"]) == len(boxes)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
            assert x1 - x0 >= 3 and y1 - y0 >= 3
        n_boxes += len(boxes)
    assert n_boxes >= 6


def test_hidden_items_get_no_box():
    """With min_visible above 1 no item can qualify; with 0 every pasted item is boxed."""
    white = cp.Cutout(np.full((20, 20, 3), 255, np.uint8), np.ones((20, 20), np.float32), "white")
    _, none, _ = cp.compose_frame(np.random.default_rng(0), [white], (200, 150), (3, 3), 0.0, min_visible=1.01)
    _, some, _ = cp.compose_frame(np.random.default_rng(0), [white], (200, 150), (3, 3), 0.0, min_visible=0.0)
    assert len(none) == 0 and len(some) >= 1


def test_kelvin_gains_are_warm_below_and_cool_above_daylight():
    warm, day, cool = cp._kelvin_rgb(3000), cp._kelvin_rgb(6500), cp._kelvin_rgb(9000)
    np.testing.assert_allclose(day, 1.0, atol=1e-6)
    assert warm[0] > warm[2] and cool[2] > cool[0]


def test_write_dataset_is_reproducible_and_loadable(tmp_path):
    white = cp.Cutout(np.full((20, 30, 3), 250, np.uint8), np.ones((20, 30), np.float32), "white")
    a = cp.write_dataset(tmp_path / "a", 3, [white], seed=7)
    b = cp.write_dataset(tmp_path / "b", 3, [white], seed=7)
    assert a["annotations"] == b["annotations"]
    records = load_coco(tmp_path / "a" / "annotations.json", tmp_path / "a")
    assert len(records) == 3 and all(r.path.is_file() for r in records)


def test_synth_frames_cli(tmp_path):
    from sorterbot_cloud.detection.cli import synth_frames

    image, rec = _board_photo(tmp_path)
    coco = {"images": [{"id": 1, "file_name": "board.png", "width": 320, "height": 240}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 80, 120, 80], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "item"}]}
    (tmp_path / "board.json").write_text(json.dumps(coco))
    out = tmp_path / "synth"
    result = CliRunner().invoke(synth_frames, ["--out", str(out), "--frames", "4", "--cutouts-from",
                                               f"{tmp_path / 'board.json'}:{tmp_path}", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "1 cut-outs from 1 labelled frames" in result.output
    written = json.loads((out / "annotations.json").read_text())
    assert len(written["images"]) == 4 and len(written["annotations"]) >= 4
