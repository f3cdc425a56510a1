"""Placing a session's detections on the table: the legacy or the calibrated conversion.

:func:`locate` checks the boxes and frame sizes and hands them to
:func:`~sorterbot_cloud.geometry.legacy.locate_legacy` when the constants carry no
camera, else to :func:`~sorterbot_cloud.geometry.calibrated.locate_calibrated`;
:func:`locate_groups` does the same for several groups in one batched call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.geometry.calibrated import locate_calibrated
from sorterbot_cloud.geometry.legacy import locate_legacy
from sorterbot_cloud.geometry.located import LocatedDetection
from sorterbot_cloud.structures import StoredDetection


def locate(detections: list[StoredDetection], constants: ArmConstants) -> list[LocatedDetection]:
    """Place every detection of a session on the table (docs/design.rst, geometry).

    Parameters
    ----------
    detections : list of StoredDetection
        Boxes in the pixels of their own frame (``width_px x height_px``).
    constants : ArmConstants
        The trigger's arm constants; the calibrated conversion is used when
        ``constants.camera`` is set, else the legacy one.

    Returns
    -------
    list of LocatedDetection
        One per input detection, in input order.

    Raises
    ------
    BadRequest
        If a box is malformed (not 4 finite values, inverted) or a frame size is not positive.
    """
    boxes, sizes = _boxes_and_sizes(detections)
    if not detections:
        return []
    if constants.camera is None:
        return locate_legacy(detections, boxes, sizes, constants)
    return locate_calibrated(detections, boxes, sizes, constants)


def locate_groups(groups: Sequence[Sequence[StoredDetection]], constants: ArmConstants) -> list[list[LocatedDetection]]:
    """:func:`locate` for several groups of detections in one batched call, split back per group.

    Parameters
    ----------
    groups : sequence of sequence of StoredDetection
        E.g. the detections of each object of a session; empty groups allowed.
    constants : ArmConstants
        As for :func:`locate` (legacy constants take their session-wide statistics over
        all groups together).

    Returns
    -------
    list of list of LocatedDetection
        One list per group, each in its group's order.

    Raises
    ------
    BadRequest
        As :func:`locate`.
    """
    flat = [d for group in groups for d in group]
    placed = locate(flat, constants)
    bounds = np.cumsum([0] + [len(group) for group in groups])
    return [placed[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _boxes_and_sizes(detections: list[StoredDetection]) -> tuple[np.ndarray, np.ndarray]:
    """Stack boxes (N, 4) float64 and frame sizes (N, 2) ``(W, H)`` and check them."""
    boxes = np.zeros((len(detections), 4))
    sizes = np.zeros((len(detections), 2))
    for i, d in enumerate(detections):
        box = np.asarray(d.box_xyxy, dtype=np.float64).reshape(-1)
        if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
            raise BadRequest(f"detection {d.detection_id}: box_xyxy must be 4 finite values x0 <= x1, y0 <= y1, got {box.tolist()}")
        if int(d.width_px) <= 0 or int(d.height_px) <= 0:
            raise BadRequest(f"detection {d.detection_id}: frame size must be positive, got {d.width_px}x{d.height_px}")
        boxes[i] = box
        sizes[i] = (d.width_px, d.height_px)
    return boxes, sizes
