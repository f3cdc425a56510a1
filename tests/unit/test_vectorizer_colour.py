"""sorterbot_cloud.embedding.colour: the median CIELab colour of the middle of item boxes."""

import numpy as np
import pytest

from sorterbot_cloud.embedding.colour import COLOUR_DIM, DEFAULT_INNER_MARGIN, colour_lab
from sorterbot_cloud.errors import BadRequest, InvalidImage


def _table_with_die(table_rgb=(40, 120, 60)) -> np.ndarray:
    """A green table with a white 40x40 px die at (50..90, 30..70) carrying three black pips."""
    image = np.zeros((120, 160, 3), np.uint8)
    image[:] = table_rgb
    image[30:70, 50:90] = 255
    for y, x in ((40, 60), (50, 70), (60, 80)):
        image[y - 2:y + 2, x - 2:x + 2] = 0
    return image


def test_colour_of_a_loose_box_is_the_items_not_the_tables():
    image = _table_with_die()
    # a loose box: 10 px of table on every side, a quarter of its width
    colour = colour_lab(image, np.array([[40.0, 20.0, 100.0, 80.0]]))
    assert colour.shape == (1, COLOUR_DIM) and colour.dtype == np.float32
    # white: L* 100, a* = b* = 0; the pips (under 10 % of the middle) do not move the median
    np.testing.assert_allclose(colour[0], [100.0, 0.0, 0.0], atol=0.5)
    # with no inner margin the table dominates the box and the median turns green (a* < 0)
    whole = colour_lab(image, np.array([[0.0, 0.0, 160.0, 120.0]]), inner_margin=0.0)
    assert whole[0, 1] < -20


def test_colour_matches_the_cie_values_of_srgb_primaries():
    # sRGB red and blue in CIE 1976 L*a*b* (D65): (53.24, 80.09, 67.20) and (32.30, 79.19, -107.86)
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :10] = (255, 0, 0)
    image[:, 10:] = (0, 0, 255)
    colours = colour_lab(image, np.array([[0, 0, 10, 10], [10, 0, 20, 10]], np.float32))
    np.testing.assert_allclose(colours[0], [53.24, 80.09, 67.20], atol=0.6)
    np.testing.assert_allclose(colours[1], [32.30, 79.19, -107.86], atol=0.6)


def test_colour_keeps_box_order_and_handles_tiny_and_clipped_boxes():
    image = _table_with_die()
    boxes = np.array([[55.0, 35.0, 56.0, 36.0],      # one pixel of the die
                      [0.0, 0.0, 0.0, 0.0],          # zero-size box in the table's corner
                      [150.0, 110.0, 400.0, 300.0]])  # mostly outside: clipped to the table
    colours = colour_lab(image, boxes)
    assert colours.shape == (3, 3)
    assert colours[0, 0] > 99
    assert colours[1, 1] < -20 and colours[2, 1] < -20
    assert colour_lab(image, np.zeros((0, 4))).shape == (0, 3)


@pytest.mark.parametrize("image, boxes, margin, error, match", [
    (np.zeros((10, 10), np.uint8), [[0, 0, 5, 5]], DEFAULT_INNER_MARGIN, InvalidImage, "shape"),
    (np.zeros((10, 10, 3), np.float32), [[0, 0, 5, 5]], DEFAULT_INNER_MARGIN, InvalidImage, "uint8"),
    (np.zeros((10, 10, 3), np.uint8), [[0, 0, 5]], DEFAULT_INNER_MARGIN, BadRequest, "shape"),
    (np.zeros((10, 10, 3), np.uint8), [[5, 0, 1, 5]], DEFAULT_INNER_MARGIN, BadRequest, "x_max >= x_min"),
    (np.zeros((10, 10, 3), np.uint8), [[0, 0, np.nan, 5]], DEFAULT_INNER_MARGIN, BadRequest, "finite"),
    (np.zeros((10, 10, 3), np.uint8), [[20, 20, 30, 30]], DEFAULT_INNER_MARGIN, BadRequest, "outside"),
    (np.zeros((10, 10, 3), np.uint8), [[0, 0, 5, 5]], 0.5, BadRequest, "inner_margin"),
    (np.zeros((10, 10, 3), np.uint8), [[0, 0, 5, 5]], -0.1, BadRequest, "inner_margin"),
], ids=["grey", "float", "three-columns", "inverted", "nan", "outside", "margin-half", "margin-negative"])
def test_colour_rejects_bad_input(image, boxes, margin, error, match):
    with pytest.raises(error, match=match):
        colour_lab(image, np.asarray(boxes, np.float64), inner_margin=margin)
