"""Item colour: the median CIELab colour of the middle of each item box.

The ResNet18 embedding sees colour, but is trained to tell the *training* kinds apart and
weighs shape and texture as much: on held-out kinds the white dice and black dominoes of
one session embed only 0.09..0.14 apart. A plain colour measurement is cheap and does not
depend on the kinds the embedder was trained on, so the trigger can append it to the
grouping features (:func:`sorterbot_cloud.planner.item_features`,
``Settings.grouping_colour_weight``). On the simulator's tuning sessions it did not sort
more sessions (two-tone items and shaded cubes split), so the
default weight is 0: a site whose kinds differ mainly in colour can tune it on its own
recorded sessions (``sorterbot-cloud tune-grouping --colour-weights``).

The descriptor is the per-channel median of CIELab over the box's inner part: the box
shrunk by ``inner_margin`` of its width and height on every side, which drops the table
and the shadows at the item's outline. The median ignores the few pixels of specular
highlight or printed pips. CIELab (CIE 1976 L*a*b*, D65 white, through OpenCV's
``cv2.COLOR_RGB2Lab`` on float input) is used because Euclidean distance in it follows
perceived colour difference far better than in RGB.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from sorterbot_cloud.errors import BadRequest

from .crops import check_boxes, check_image

#: Fraction of the box's width and height cut off each side before the median is taken.
DEFAULT_INNER_MARGIN = 0.25

#: Number of values of one descriptor: L* (0..100), a* and b* (about -128..127).
COLOUR_DIM = 3


def colour_lab(image: np.ndarray, boxes_xyxy: np.ndarray, inner_margin: float = DEFAULT_INNER_MARGIN) -> np.ndarray:
    """Median CIELab colour of the inner part of each box.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8, RGB
    boxes_xyxy : ndarray of shape (N, 4), float, pixels
        ``x_min, y_min, x_max, y_max`` in ``image``'s pixel coordinates.
    inner_margin : float, default 0.25
        Fraction of the box's width (height) removed on the left and right (top and
        bottom); in ``[0, 0.5)``. The remaining region is rounded to whole pixels, clipped
        to the image and always at least one pixel.

    Returns
    -------
    ndarray of shape (N, 3), float32
        ``L*`` in ``[0, 100]``, ``a*`` and ``b*`` in about ``[-128, 127]`` (CIE 1976, D65).

    Raises
    ------
    InvalidImage
        If ``image`` is not an (H, W, 3) uint8 array.
    BadRequest
        If ``boxes_xyxy`` is not (N, 4) finite with ``x_max >= x_min`` and
        ``y_max >= y_min``, if a box lies wholly outside the image, or if ``inner_margin``
        is not in ``[0, 0.5)``.
    """
    check_image(image)
    if not (isinstance(inner_margin, (int, float)) and math.isfinite(inner_margin) and 0 <= inner_margin < 0.5):
        raise BadRequest(f"inner_margin must be a number in [0, 0.5), got {inner_margin!r}")
    boxes = check_boxes(boxes_xyxy)
    height_px, width_px = image.shape[:2]
    out = np.zeros((len(boxes), COLOUR_DIM), dtype=np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if x1 < 0 or y1 < 0 or x0 >= width_px or y0 >= height_px:
            raise BadRequest(f"box {i} {[float(v) for v in (x0, y0, x1, y1)]} lies outside the {width_px}x{height_px} image")
        dx, dy = inner_margin * (x1 - x0), inner_margin * (y1 - y0)
        left = min(max(0, math.floor(x0 + dx)), width_px - 1)
        top = min(max(0, math.floor(y0 + dy)), height_px - 1)
        right = max(left + 1, min(width_px, math.ceil(x1 - dx)))
        bottom = max(top + 1, min(height_px, math.ceil(y1 - dy)))
        patch = image[top:bottom, left:right].astype(np.float32) / 255.0
        lab = cv2.cvtColor(patch, cv2.COLOR_RGB2Lab).reshape(-1, COLOUR_DIM)
        out[i] = np.median(lab, axis=0)
    return out
