"""Item crops: cut each detected item out of its frame with a little context.

The embedder sees the item plus a thin ring of the table around it: a detector's box
is rarely tight to the pixel, and a small margin keeps the item's outline whole.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from sorterbot_cloud.config import Settings
from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.imaging import check_image

#: Default context margin, as a fraction of the box's width and height added on each side
#: (the service's setting ``crop_margin``).
DEFAULT_MARGIN = Settings.crop_margin

#: Grey that fills the letterbox bands (the ImageNet mean colour, RGB uint8, so the bands
#: are zero after :data:`sorterbot_cloud.embedding.embedder.IMAGENET_MEAN` / ``STD`` normalisation).
PAD_RGB = (124, 116, 104)


def check_boxes(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Check item boxes and return them as float64.

    Parameters
    ----------
    boxes_xyxy : array-like of shape (N, 4), pixels
        ``x_min, y_min, x_max, y_max``; an empty array stands for no box.

    Returns
    -------
    ndarray of shape (N, 4), float64

    Raises
    ------
    BadRequest
        If the boxes are not (N, 4), not finite, or have ``x_max < x_min`` or ``y_max < y_min``.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise BadRequest(f"boxes_xyxy must have shape (N, 4), got {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise BadRequest("boxes_xyxy must be finite")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise BadRequest("boxes_xyxy must satisfy x_max >= x_min and y_max >= y_min")
    return boxes


def crop_items(image: np.ndarray, boxes_xyxy: np.ndarray, margin: float = DEFAULT_MARGIN) -> list[np.ndarray]:
    """Cut one crop per box, widened by a context margin and clipped to the image.

    Each box grows by ``margin * width`` left and right and ``margin * height`` above and
    below, is rounded outwards to whole pixels (``floor`` of the minimum, ``ceil`` of the
    maximum) and clipped to the image. A box of zero width or height still gives a crop
    of at least one pixel.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8, RGB
    boxes_xyxy : ndarray of shape (N, 4), float, pixels
        ``x_min, y_min, x_max, y_max`` in ``image``'s pixel coordinates.
    margin : float, default 0.1
        Fraction of the box size added on each side; ``>= 0``.

    Returns
    -------
    list of ndarray of shape (h_i, w_i, 3), uint8, RGB
        ``N`` contiguous copies, in the order of ``boxes_xyxy``.

    Raises
    ------
    InvalidImage
        If ``image`` is not an (H, W, 3) uint8 array.
    BadRequest
        If ``boxes_xyxy`` is not (N, 4) finite with ``x_max >= x_min`` and
        ``y_max >= y_min``, if ``margin`` is negative or not finite, or if a box lies
        wholly outside the image.
    """
    check_image(image)
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise BadRequest(f"margin must be a finite number >= 0, got {margin!r}")
    boxes = check_boxes(boxes_xyxy)
    height_px, width_px = image.shape[:2]
    crops = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        dx, dy = margin * (x1 - x0), margin * (y1 - y0)
        left = max(0, math.floor(x0 - dx))
        top = max(0, math.floor(y0 - dy))
        right = min(width_px, math.ceil(x1 + dx))
        bottom = min(height_px, math.ceil(y1 + dy))
        if left >= width_px or top >= height_px or right <= 0 or bottom <= 0:
            raise BadRequest(
                f"box {i} {[float(v) for v in (x0, y0, x1, y1)]} lies outside the {width_px}x{height_px} image"
            )
        right, bottom = max(right, left + 1), max(bottom, top + 1)
        crops.append(np.ascontiguousarray(image[top:bottom, left:right]))
    return crops


def letterbox(crop: np.ndarray, size_px: int) -> np.ndarray:
    """Scale a crop to fit a ``size_px`` square, keeping its aspect ratio, and pad it.

    The longer side becomes ``size_px``; the bands on the shorter side are filled with
    :data:`PAD_RGB`. Keeping the aspect ratio keeps the item's shape, a cue that tells
    types apart. Downscaling uses area averaging (``cv2.INTER_AREA``), upscaling bilinear.

    Parameters
    ----------
    crop : ndarray of shape (h, w, 3), uint8, RGB
    size_px : int
        Side of the output square.

    Returns
    -------
    ndarray of shape (size_px, size_px, 3), uint8, RGB

    Raises
    ------
    InvalidImage
        If ``crop`` is not an (h, w, 3) uint8 array.
    """
    check_image(crop)
    h, w = crop.shape[:2]
    scale = size_px / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(crop, (new_w, new_h), interpolation=interpolation)
    out = np.empty((size_px, size_px, 3), np.uint8)
    out[:] = PAD_RGB
    top, left = (size_px - new_h) // 2, (size_px - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def letterbox_batch(crops, size_px: int) -> np.ndarray:
    """Check, :func:`letterbox` and stack crops into the embedders' input batch.

    Parameters
    ----------
    crops : sequence of ndarray of shape (h_i, w_i, 3), uint8, RGB
    size_px : int
        Side ``S`` of the square input.

    Returns
    -------
    ndarray of shape (N, 3, S, S), uint8, C-contiguous (N = 0 for no crops)

    Raises
    ------
    InvalidImage
        If a crop is not an (h, w, 3) uint8 array.
    """
    if len(crops) == 0:
        return np.zeros((0, 3, size_px, size_px), np.uint8)
    return np.ascontiguousarray(np.stack([letterbox(check_image(c), size_px) for c in crops]).transpose(0, 3, 1, 2))
