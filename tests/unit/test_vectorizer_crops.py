"""crop_items and letterbox: margins, clipping, validation."""

import numpy as np
import pytest

from sorterbot_cloud.embedding.crops import PAD_RGB, crop_items, letterbox
from sorterbot_cloud.errors import BadRequest, InvalidImage


def _image(h=100, w=120, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "box, margin, expected_slice",
    [
        ((10, 20, 30, 60), 0.1, (16, 64, 8, 32)),  # dx = 2, dy = 4
        ((10, 20, 30, 60), 0.0, (20, 60, 10, 30)),
        ((10.4, 20.6, 29.2, 59.9), 0.0, (20, 60, 10, 30)),  # rounded outwards
        ((0, 0, 10, 10), 0.5, (0, 15, 0, 15)),  # clipped at the top left
        ((110, 90, 120, 100), 0.2, (88, 100, 108, 120)),  # clipped at the bottom right
        ((-20, -5, 30, 40), 0.0, (0, 40, 0, 30)),  # partly outside
        ((50, 50, 50, 50), 0.1, (50, 51, 50, 51)),  # zero size still gives one pixel
    ],
    ids=["margin", "no-margin", "fractional", "clip-top-left", "clip-bottom-right", "partly-outside", "zero-size"],
)
def test_crop_items_cuts_box_plus_margin_clipped(box, margin, expected_slice):
    image = _image()
    (crop,) = crop_items(image, np.array([box], np.float32), margin=margin)
    top, bottom, left, right = expected_slice
    np.testing.assert_array_equal(crop, image[top:bottom, left:right])
    assert crop.flags["C_CONTIGUOUS"] and crop.dtype == np.uint8


def test_crop_items_keeps_order_and_copies():
    image = _image()
    boxes = np.array([[0, 0, 10, 20], [50, 40, 90, 60], [5, 5, 6, 7]], np.float32)
    crops = crop_items(image, boxes, margin=0.0)
    assert [c.shape for c in crops] == [(20, 10, 3), (20, 40, 3), (2, 1, 3)]
    crops[0][:] = 0
    assert image[:20, :10].any(), "crops must not be views into the frame"


def test_crop_items_no_boxes():
    assert crop_items(_image(), np.zeros((0, 4))) == []


@pytest.mark.parametrize(
    "image, boxes, margin, error, match",
    [
        (np.zeros((10, 10), np.uint8), [[0, 0, 5, 5]], 0.1, InvalidImage, "shape"),
        (np.zeros((10, 10, 3), np.float32), [[0, 0, 5, 5]], 0.1, InvalidImage, "uint8"),
        (np.zeros((10, 10, 3), np.uint8), [[0, 0, 5]], 0.1, BadRequest, r"\(N, 4\)"),
        (np.zeros((10, 10, 3), np.uint8), [[5, 0, 0, 5]], 0.1, BadRequest, "x_max >= x_min"),
        (np.zeros((10, 10, 3), np.uint8), [[0, 0, np.nan, 5]], 0.1, BadRequest, "finite"),
        (np.zeros((10, 10, 3), np.uint8), [[20, 20, 30, 30]], 0.1, BadRequest, "outside"),
        (np.zeros((10, 10, 3), np.uint8), [[0, 0, 5, 5]], -0.1, BadRequest, "margin"),
    ],
    ids=["grey-image", "float-image", "box-columns", "inverted-box", "nan-box", "box-outside", "negative-margin"],
)
def test_crop_items_rejects_bad_input(image, boxes, margin, error, match):
    with pytest.raises(error, match=match):
        crop_items(image, np.asarray(boxes, np.float32), margin=margin)


@pytest.mark.parametrize("h, w", [(40, 20), (20, 40), (30, 30), (7, 300)], ids=["tall", "wide", "square", "sliver"])
def test_letterbox_keeps_aspect_and_pads(h, w):
    crop = np.full((h, w, 3), 200, np.uint8)
    out = letterbox(crop, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    content = np.all(out == 200, axis=2)
    rows, cols = np.flatnonzero(content.any(1)), np.flatnonzero(content.any(0))
    assert abs((cols.size / rows.size) - (w / h)) <= max(0.1 * w / h, 2 / rows.size * w / h + 1e-9)
    assert max(rows.size, cols.size) == 64
    padded = ~content
    if padded.any():
        assert np.all(out[padded] == PAD_RGB)
