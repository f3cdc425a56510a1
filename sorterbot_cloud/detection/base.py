"""The detector interface shared by every backend.

A detector maps an RGB image to :class:`~sorterbot_cloud.structures.Detections` whose
boxes are in the pixel coordinates of the image it was given (XYXY, origin top left),
with ``class_ids`` indexing :data:`~sorterbot_cloud.structures.CLASS_NAMES`
(``item`` = 0, ``container`` = 1).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from sorterbot_cloud.imaging import check_image
from sorterbot_cloud.structures import CLASS_NAMES, Detections

__all__ = ["CLASS_NAMES", "Detector", "check_image"]


@runtime_checkable
class Detector(Protocol):
    """Anything that finds items and containers on RGB images."""

    def detect(self, image: np.ndarray) -> Detections:
        """Detect on one image.

        Parameters
        ----------
        image : ndarray of shape (H, W, 3), uint8, RGB

        Returns
        -------
        Detections
            Boxes in the pixels of ``image``.

        Raises
        ------
        InvalidImage
            If ``image`` is not an (H, W, 3) uint8 array.
        """

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect on several images (sizes may differ); one :class:`Detections` per image."""
