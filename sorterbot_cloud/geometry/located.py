"""Detections placed on the table, and box sides cut by the image border.

:class:`LocatedDetection` is what both conversions return
(:func:`~sorterbot_cloud.geometry.legacy.locate_legacy`,
:func:`~sorterbot_cloud.geometry.calibrated.locate_calibrated`); :func:`truncation` tells
which box sides the image border cuts: the shape fits leave them out, and such boxes get
a lower averaging weight (:data:`TRUNCATED_WEIGHT_FACTOR`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.structures import StoredDetection

#: A box side closer to the image border than the larger of BORDER_MARGIN_PX and
#: BORDER_MARGIN_REL times the box's extent along that axis is treated as cut by it. A
#: detector's box of an object cut by the border often stops short of it: on 40 rendered
#: sessions (the session-2 detector weights) 31 % of the containers' cut left/right sides,
#: 54 % of the top and 85 % of the bottom ones ended more than 2 px inside (bottom median
#: 20 px). Taken for real edges they pull the shape fits; with 5 % the containers' median
#: position error fell from 17.9 to 14.5 mm. The simulator's own boxes lose a little
#: (evaluate-sessions --detector ground-truth, p95: held-out kinds 7.9 -> 7.8 mm, known
#: kinds 7.9 -> 8.4 mm).
BORDER_MARGIN_PX = 2.0
BORDER_MARGIN_REL = 0.05
#: Averaging weight factor of a box cut by the image border (its position is biased).
TRUNCATED_WEIGHT_FACTOR = 0.1


@dataclass(frozen=True)
class LocatedDetection:
    """One stored detection placed on the table.

    Parameters
    ----------
    detection : StoredDetection
        The detection as read from the store.
    x_mm, y_mm : float
        Estimated footprint centre in the world frame (calibrated: millimetres; legacy:
        legacy pixel units, see :mod:`~sorterbot_cloud.geometry.legacy`).
    r_mm : float
        Distance from the base axis, ``hypot(x_mm, y_mm)`` (legacy: the pixel distance ``d``).
    theta_deg : float
        Angle of the position, counter-clockwise from +x seen from above.
    pw0, pw1 : float
        Base and reach servo pulse widths (µs) that put the gripper there.
    size_mm : float
        Estimated footprint diameter (legacy: larger box side in pixels); > 0.
    weight : float
        Weight for averaging positions across frames: the score, times
        :data:`TRUNCATED_WEIGHT_FACTOR` when the box touches the image border; >= 0.
    truncated : bool
        Whether a box side touches the image border.
    height_mm : float
        Estimated object height (calibrated mode; 0 in legacy mode).
    constants : ArmConstants or None
        The constants the detection was located with (lets :func:`dedup.merge` refine
        objects across frames without being handed them again).

    Raises
    ------
    ValueError
        If a value is not finite, ``size_mm <= 0`` or ``weight < 0``.
    """

    detection: StoredDetection
    x_mm: float
    y_mm: float
    r_mm: float
    theta_deg: float
    pw0: float
    pw1: float
    size_mm: float
    weight: float
    truncated: bool = False
    height_mm: float = 0.0
    constants: ArmConstants | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = {k: getattr(self, k) for k in ("x_mm", "y_mm", "r_mm", "theta_deg", "pw0", "pw1", "size_mm", "weight", "height_mm")}
        bad = [k for k, v in values.items() if not math.isfinite(float(v))]
        if bad:
            raise ValueError(f"LocatedDetection values must be finite, got non-finite {bad}")
        if self.size_mm <= 0:
            raise ValueError(f"size_mm must be > 0, got {self.size_mm}")
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")

    @property
    def class_id(self) -> int:
        """Class of the detection (``ITEM_CLASS_ID`` or ``CONTAINER_CLASS_ID``)."""
        return int(self.detection.class_id)

    @property
    def image_name(self) -> str:
        """Frame the detection belongs to."""
        return self.detection.image_name


def truncation(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Which sides (left, top, right, bottom) are cut by the border: bool (N, 4).

    A side counts as cut within ``max(BORDER_MARGIN_PX, BORDER_MARGIN_REL * extent)``
    pixels of the border, ``extent`` the box's width (left, right) or height (top, bottom).

    Parameters
    ----------
    boxes : ndarray of shape (N, 4), float, pixels
        ``x0, y0, x1, y1`` in the pixels of each box's own frame.
    sizes : ndarray of shape (N, 2), float, pixels
        Frame ``(W, H)`` of each box.

    Returns
    -------
    ndarray of shape (N, 4), bool
        True where the side (left, top, right, bottom) is cut by the image border.
    """
    w, h = sizes[:, 0], sizes[:, 1]
    mx = np.maximum(BORDER_MARGIN_PX, BORDER_MARGIN_REL * (boxes[:, 2] - boxes[:, 0]))
    my = np.maximum(BORDER_MARGIN_PX, BORDER_MARGIN_REL * (boxes[:, 3] - boxes[:, 1]))
    return np.stack(
        [
            boxes[:, 0] <= mx,
            boxes[:, 1] <= my,
            boxes[:, 2] >= w - mx,
            boxes[:, 3] >= h - my,
        ],
        axis=1,
    )
