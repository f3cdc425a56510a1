"""The detector interface shared by every backend.

A detector maps an RGB image to :class:`~sorterbot_cloud.structures.Detections` whose
boxes are in the pixel coordinates of the image it was given (XYXY, origin top left),
with ``class_ids`` indexing :data:`~sorterbot_cloud.structures.CLASS_NAMES`
(``item`` = 0, ``container`` = 1).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from sorterbot_cloud.errors import InvalidImage
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


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check that ``image`` is an RGB frame and return it as a C-contiguous array.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    name : str
        Used in the error message.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8

    Raises
    ------
    InvalidImage
        On another type, dtype, rank or channel count, or an empty image.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImage(f"{name} must be a numpy array of shape (H, W, 3), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImage(f"{name} must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidImage(f"{name} must have dtype uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImage(f"{name} must not be empty, got shape {image.shape}")
    return np.ascontiguousarray(image)
