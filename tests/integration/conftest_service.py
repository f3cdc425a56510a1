"""Helpers for the service and API tests: fakes for the model stages and synthetic frames.

The models are not under test in these tests, so :class:`FakeDetector` and
:class:`FakeEmbedder` stand in for them:

- synthetic frames are a flat grey table with filled rectangles of pure colours drawn
  by :func:`draw_frame`; :class:`FakeDetector` finds them by colour (one
  ``cv2.inRange`` + connected components per palette colour); green rectangles are
  containers, every other palette colour is an item;
- :class:`FakeEmbedder` maps a crop's mean colour to a deterministic unit vector of
  512 floats, so items of one colour embed alike and K-Means groups them by colour.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.imaging import encode_jpeg, encode_png
from sorterbot_cloud.structures import CONTAINER_CLASS_ID, ITEM_CLASS_ID, Detections

#: Palette of the synthetic frames (RGB). Green marks containers.
PALETTE = {
    "red": (220, 30, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 220, 30),
    "green": (30, 200, 30),
}
CONTAINER_COLOUR = "green"
BACKGROUND_RGB = (128, 128, 128)
EMBEDDING_DIM = 512


@dataclass(frozen=True)
class Rect:
    """A filled rectangle of a palette colour: ``box_xyxy`` in pixels (inclusive)."""

    colour: str
    box_xyxy: tuple[int, int, int, int]


def draw_frame(rects: list[Rect], width_px: int = 320, height_px: int = 240) -> np.ndarray:
    """Draw rectangles on a grey table.

    Returns
    -------
    image : ndarray of shape (height_px, width_px, 3), uint8, RGB
    """
    image = np.empty((height_px, width_px, 3), np.uint8)
    image[:] = BACKGROUND_RGB
    for rect in rects:
        x0, y0, x1, y1 = rect.box_xyxy
        image[y0 : y1 + 1, x0 : x1 + 1] = PALETTE[rect.colour]
    return image


def frame_bytes(rects: list[Rect], fmt: str = "png", width_px: int = 320, height_px: int = 240) -> bytes:
    """Encoded synthetic frame (PNG is lossless, so colours stay exact)."""
    image = draw_frame(rects, width_px, height_px)
    return encode_png(image) if fmt == "png" else encode_jpeg(image, quality=95)


class FakeDetector:
    """Finds the palette rectangles of :func:`draw_frame` frames (stands in for the detector).

    Boxes are the connected components' bounding boxes (``x_max = x + w``), score 0.9.
    Components smaller than ``min_area_px`` are ignored (JPEG ringing).
    """

    def __init__(self, min_area_px: int = 30, tolerance: int = 40) -> None:
        self.min_area_px = min_area_px
        self.tolerance = tolerance
        self.calls = 0

    def detect(self, image: np.ndarray) -> Detections:
        self.calls += 1
        boxes, classes = [], []
        for name, rgb in PALETTE.items():
            lo = np.clip(np.array(rgb) - self.tolerance, 0, 255).astype(np.uint8)
            hi = np.clip(np.array(rgb) + self.tolerance, 0, 255).astype(np.uint8)
            mask = cv2.inRange(image, lo, hi)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            for x, y, w, h, area in stats[1:n]:
                if area >= self.min_area_px:
                    boxes.append([x, y, x + w, y + h])
                    classes.append(CONTAINER_CLASS_ID if name == CONTAINER_COLOUR else ITEM_CLASS_ID)
        if not boxes:
            return Detections.empty()
        order = np.lexsort((np.array(boxes)[:, 1], np.array(boxes)[:, 0]))
        boxes_xyxy = np.array(boxes, np.float32)[order]
        return Detections(boxes_xyxy, np.full(len(boxes), 0.9, np.float32), np.array(classes, np.int64)[order])

    def detect_batch(self, images):
        return [self.detect(image) for image in images]


class FakeEmbedder:
    """Deterministic embeddings from a crop's mean colour (stands in for ResNet18).

    The mean RGB (scaled to [0, 1]) is repeated over 512 dimensions with a fixed
    per-dimension sign pattern, then L2-normalised, so crops of one colour give
    (nearly) identical vectors and different colours clearly different ones.
    """

    def __init__(self, dim: int = EMBEDDING_DIM) -> None:
        self.dim = dim
        signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(3, dim))
        self._basis = signs.astype(np.float32)
        self.calls = 0

    def embed(self, crops) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(crops), self.dim), np.float32)
        for i, crop in enumerate(crops):
            mean = np.asarray(crop, np.float32).reshape(-1, 3).mean(axis=0) / 255.0
            vec = (mean - 0.5) @ self._basis
            out[i] = vec / max(np.linalg.norm(vec), 1e-6)
        return out


class FakeArchive:
    """In-memory archive with the :class:`~sorterbot_cloud.storage.DiskArchive` interface."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, arm_id: str, session_id: str, image_name: str, data: bytes) -> str:
        key = f"{arm_id}/{session_id}/{image_name}"
        self.blobs[key] = bytes(data)
        return "mem://" + key

    @contextmanager
    def staged(self, arm_id: str, session_id: str, image_name: str, data: bytes) -> Iterator[str]:
        key = f"{arm_id}/{session_id}/{image_name}"
        yield "mem://" + key
        self.blobs[key] = bytes(data)

    def get(self, uri_or_key: str) -> bytes:
        return self.blobs[uri_or_key.removeprefix("mem://")]


def legacy_constants(arm_id: str | None = "ARM001", **extra) -> dict:
    """The original ``arm_config.yaml`` keys of the reference arm (no camera block)."""
    mapping = ArmConstants.reference(arm_id=arm_id or "ARM001", calibrated=False).to_mapping()
    if arm_id is None:
        mapping.pop("arm_id")
    mapping.update(extra)
    return mapping


#: A two-frame session: 4 items of 2 colours and 2 containers, none seen twice
#: (the frames are 200 µs apart, far more than any box's extent in the legacy geometry).
SESSION_FRAMES: dict[str, list[Rect]] = {
    "1200.jpg": [
        Rect("red", (40, 40, 70, 70)),
        Rect("blue", (150, 60, 180, 90)),
        Rect("green", (230, 150, 300, 220)),
    ],
    "1400.jpg": [
        Rect("red", (130, 150, 160, 180)),
        Rect("blue", (200, 30, 230, 60)),
        Rect("green", (20, 150, 90, 220)),
    ],
}


def colour_of_box(image_name: str, box_xyxy) -> str:
    """The palette colour of the :data:`SESSION_FRAMES` rectangle a detected box came from."""
    x0, y0 = int(round(box_xyxy[0])), int(round(box_xyxy[1]))
    for rect in SESSION_FRAMES[image_name]:
        if rect.box_xyxy[:2] == (x0, y0):
            return rect.colour
    raise KeyError(f"no rectangle at {(x0, y0)} on {image_name}")
