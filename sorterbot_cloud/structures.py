"""Validated result types shared by every stage.

Each type checks its invariants at construction (shapes, dtypes, ranges) and raises
``ValueError`` stating the expected and the actual value, in the spirit of
supervision's ``Detections``. Nothing here imports torch, Flask or a database driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

#: Class names of the detector, indexed by ``class_id``.
CLASS_NAMES: tuple[str, ...] = ("item", "container")
ITEM_CLASS_ID = 0
CONTAINER_CLASS_ID = 1

#: Arm and session ids: 1 to 64 letters, digits, ``_``, ``-`` and ``.`` (docs/design.rst, Terms).
#: Anchored with ``\A`` and ``\Z`` (``$`` also matches before a trailing newline); check
#: with ``fullmatch``.
ID_PATTERN = re.compile(r"\A[A-Za-z0-9_.\-]{1,64}\Z")
#: Frame names: ``<pulse width>.<ext>`` with an optional fractional part, e.g. ``1200.jpg``
#: (anchored like :data:`ID_PATTERN`).
IMAGE_NAME_PATTERN = re.compile(r"\A(?P<pw>[0-9]{1,5}(?:\.[0-9]{1,3})?)\.(?P<ext>jpe?g|png)\Z", re.I)


def _as_boxes(boxes, name: str) -> np.ndarray:
    array = np.asarray(boxes, np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) (XYXY), got {np.shape(boxes)}")
    return array


def _intersections(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    lt = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    rb = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    return np.prod(np.clip(rb - lt, 0, None), axis=2)


def box_areas(boxes_xyxy) -> np.ndarray:
    """Areas of XYXY boxes; inverted sides count as zero.

    Parameters
    ----------
    boxes_xyxy : array-like of shape (N, 4) or (4,), pixels

    Returns
    -------
    ndarray of shape (N,), float64, square pixels

    Raises
    ------
    ValueError
        If the boxes are not of shape (N, 4) or (4,).
    """
    boxes = _as_boxes(boxes_xyxy, "boxes_xyxy")
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def pairwise_iou(boxes_a, boxes_b) -> np.ndarray:
    """Intersection over union of every box of ``boxes_a`` with every box of ``boxes_b``.

    Named after Detectron2's ``structures.boxes.pairwise_iou``. Pairs whose union is
    empty (two degenerate boxes) get 0.

    Parameters
    ----------
    boxes_a : array-like of shape (N, 4) or (4,), XYXY pixels
    boxes_b : array-like of shape (M, 4) or (4,), XYXY pixels

    Returns
    -------
    ndarray of shape (N, M), float64, in [0, 1]

    Raises
    ------
    ValueError
        If either argument is not of shape (N, 4) or (4,).

    Examples
    --------
    >>> pairwise_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10]]).round(3).tolist()
    [[1.0, 0.333]]
    """
    a, b = _as_boxes(boxes_a, "boxes_a"), _as_boxes(boxes_b, "boxes_b")
    inter = _intersections(a, b)
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pairwise_ioa(boxes_a, boxes_b) -> np.ndarray:
    """Intersection over the area of each ``boxes_b`` box (Detectron2's ``pairwise_ioa``).

    Entry (i, j) is the share of box ``boxes_b[j]`` that lies inside box ``boxes_a[i]``;
    a degenerate box ``boxes_b[j]`` gets 0.

    Parameters
    ----------
    boxes_a : array-like of shape (N, 4) or (4,), XYXY pixels
    boxes_b : array-like of shape (M, 4) or (4,), XYXY pixels

    Returns
    -------
    ndarray of shape (N, M), float64, in [0, 1]

    Raises
    ------
    ValueError
        If either argument is not of shape (N, 4) or (4,).

    Examples
    --------
    >>> pairwise_ioa([[0, 0, 20, 20]], [[0, 0, 10, 10], [10, 0, 30, 10]]).tolist()
    [[1.0, 0.5]]
    """
    a, b = _as_boxes(boxes_a, "boxes_a"), _as_boxes(boxes_b, "boxes_b")
    area_b = box_areas(b)[None, :]
    return np.where(area_b > 0, _intersections(a, b) / np.where(area_b > 0, area_b, 1.0), 0.0)


def class_name(class_id: int) -> str:
    """Return the class name (``item`` or ``container``) of ``class_id``.

    Raises
    ------
    ValueError
        If ``class_id`` is not a known class.
    """
    if not 0 <= int(class_id) < len(CLASS_NAMES):
        raise ValueError(f"class_id must be in [0, {len(CLASS_NAMES)}), got {class_id}")
    return CLASS_NAMES[int(class_id)]


def class_id_of(name: str) -> int:
    """Return the class id of a class name.

    Raises
    ------
    ValueError
        If ``name`` is not ``item`` or ``container``.
    """
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ValueError(f"class must be one of {CLASS_NAMES}, got {name!r}") from None


def pulse_width_of_image_name(image_name: str) -> float:
    """Parse the base servo pulse width (µs) from a frame name such as ``1200.jpg``.

    The original SorterBot client names every frame after the servo-0 pulse width at
    which it was taken (docs/design.rst, Terms).

    Raises
    ------
    ValueError
        If the name is not ``<number>.jpg|jpeg|png``.
    """
    match = IMAGE_NAME_PATTERN.fullmatch(image_name or "")
    if match is None:
        raise ValueError(
            f"image_name must look like '<pulse width>.jpg' (e.g. '1200.jpg'), got {image_name!r}"
        )
    return float(match.group("pw"))


@dataclass(frozen=True)
class Detections:
    """Boxes found on one image.

    Parameters
    ----------
    boxes_xyxy : ndarray of shape (N, 4), float32, pixels
        ``x_min, y_min, x_max, y_max`` in the original frame's pixel coordinates
        (origin top left, x right, y down); ``x_max >= x_min`` and ``y_max >= y_min``.
    scores : ndarray of shape (N,), float32
        Confidence in [0, 1].
    class_ids : ndarray of shape (N,), int64
        Index into :data:`CLASS_NAMES`.

    Raises
    ------
    ValueError
        On a wrong shape, a non-finite value, an inverted box, a score outside [0, 1]
        or an unknown class id.
    """

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes_xyxy, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes_xyxy must have shape (N, 4), got {boxes.shape}")
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        n = boxes.shape[0]
        if scores.shape != (n,) or class_ids.shape != (n,):
            raise ValueError(
                f"scores and class_ids must have shape ({n},), got {scores.shape} and {class_ids.shape}"
            )
        if not np.all(np.isfinite(boxes)):
            raise ValueError("boxes_xyxy must be finite")
        if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
            raise ValueError("boxes_xyxy must satisfy x_max >= x_min and y_max >= y_min")
        if np.any((scores < 0) | (scores > 1)) or not np.all(np.isfinite(scores)):
            raise ValueError("scores must lie in [0, 1]")
        if np.any((class_ids < 0) | (class_ids >= len(CLASS_NAMES))):
            raise ValueError(f"class_ids must be in [0, {len(CLASS_NAMES)}), got {np.unique(class_ids)}")
        object.__setattr__(self, "boxes_xyxy", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)

    @classmethod
    def empty(cls) -> "Detections":
        """Return detections with N = 0."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.boxes_xyxy.shape[0])

    def __getitem__(self, index) -> "Detections":
        """Select detections by boolean mask, index array or slice."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(self.boxes_xyxy[index], self.scores[index], self.class_ids[index])

    @property
    def centers_xy(self) -> np.ndarray:
        """Box centres, ndarray of shape (N, 2), float32, pixels."""
        return np.stack(
            [(self.boxes_xyxy[:, 0] + self.boxes_xyxy[:, 2]) / 2, (self.boxes_xyxy[:, 1] + self.boxes_xyxy[:, 3]) / 2],
            axis=1,
        ).astype(np.float32)

    def to_records(self) -> list[dict]:
        """Return one JSON-ready dict per detection: ``class``, ``class_id``, ``box_xyxy``, ``score``."""
        return [
            {
                "class": CLASS_NAMES[int(c)],
                "class_id": int(c),
                "box_xyxy": [round(float(v), 2) for v in box],
                "score": round(float(s), 4),
            }
            for box, s, c in zip(self.boxes_xyxy, self.scores, self.class_ids, strict=True)
        ]


@dataclass(frozen=True)
class Frame:
    """One captured camera frame of a sorting session (the record, not the pixels).

    Parameters
    ----------
    arm_id, session_id : str
        Ids matching :data:`ID_PATTERN`.
    image_name : str
        ``<pulse width>.jpg``; the base servo pulse width is parsed from it.
    width_px, height_px : int
        Size of the full-resolution frame.

    Raises
    ------
    ValueError
        If an id or the image name is malformed, or the size is not positive.
    """

    arm_id: str
    session_id: str
    image_name: str
    width_px: int
    height_px: int

    def __post_init__(self) -> None:
        for name in ("arm_id", "session_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
                raise ValueError(f"{name} must be 1-64 of [A-Za-z0-9_.-], got {value!r}")
        pulse_width_of_image_name(self.image_name)
        if int(self.width_px) <= 0 or int(self.height_px) <= 0:
            raise ValueError(f"frame size must be positive, got {self.width_px}x{self.height_px}")

    @property
    def pw0(self) -> float:
        """Base servo pulse width (µs) at which the frame was taken."""
        return pulse_width_of_image_name(self.image_name)


@dataclass(frozen=True)
class StoredDetection:
    """One detection as the session trigger reads it back from the store.

    Parameters
    ----------
    detection_id : int
        Database id.
    image_name : str
        Frame the detection belongs to.
    frame_pw0 : float
        Base pulse width (µs) of that frame.
    width_px, height_px : int
        Size of that frame.
    box_xyxy : ndarray of shape (4,), float32, pixels
    score : float
    class_id : int
    embedding : ndarray of shape (D,), float32, or None
        L2-normalised item embedding (None for containers).
    colour_lab : ndarray of shape (3,), float32, or None
        Median CIELab colour of the box's middle (:func:`sorterbot_cloud.embedding.colour.colour_lab`);
        None for containers and for items stored before it was measured.
    """

    detection_id: int
    image_name: str
    frame_pw0: float
    width_px: int
    height_px: int
    box_xyxy: np.ndarray
    score: float
    class_id: int
    embedding: np.ndarray | None = None
    colour_lab: np.ndarray | None = None


@dataclass(frozen=True)
class PolarPoint:
    """A position on the table in arm polar coordinates and in servo pulse widths.

    Parameters
    ----------
    r_mm : float
        Distance from the base axis (calibrated mode: millimetres; legacy mode: the
        legacy pixel distance ``d`` of docs/design.rst, still suffixed ``_mm`` for one schema,
        and flagged by ``units``).
    theta_deg : float
        Angle, counter-clockwise from +x seen from above.
    pw0, pw1 : float
        Base and reach servo pulse widths (µs) that put the gripper there.
    """

    r_mm: float
    theta_deg: float
    pw0: float
    pw1: float


@dataclass
class ArmObject:
    """One physical item or container after merging its detections across frames.

    Parameters
    ----------
    object_id : int
        Index of the object in its session (deterministic order).
    class_id : int
    position : PolarPoint
    x_mm, y_mm : float
        Footprint centre in the world frame (calibrated mode; legacy mode: pseudo units).
    size_mm : float
        Estimated footprint diameter.
    score : float
        Highest detection score.
    detection_ids : list of int
        Detections merged into this object.
    embedding : ndarray of shape (D,), float32, or None
        Mean of the item's detection embeddings, re-normalised.
    height_mm : float or None
        Estimated height above the table (calibrated mode: of the shape fitted to all the
        object's boxes, else the weighted mean of the single-frame fits); None in legacy
        mode, which has no metric scale.
    colour_lab : ndarray of shape (3,), float32, or None
        Weighted mean CIELab colour of the item's detections; None for containers, or when
        one of its detections has no colour stored.
    """

    object_id: int
    class_id: int
    position: PolarPoint
    x_mm: float
    y_mm: float
    size_mm: float
    score: float
    detection_ids: list[int] = field(default_factory=list)
    embedding: np.ndarray | None = None
    height_mm: float | None = None
    colour_lab: np.ndarray | None = None


@dataclass(frozen=True)
class Command:
    """One pick-and-place move.

    Parameters
    ----------
    item : ArmObject
    container : ArmObject
    cluster_id : int
        Group of the item (K-Means label).
    """

    item: ArmObject
    container: ArmObject
    cluster_id: int

    def to_wire(self) -> list[list[float]]:
        """Original client format ``[[pick_pw0, pick_pw1], [place_pw0, place_pw1]]`` (µs)."""
        return [
            [round(self.item.position.pw0, 2), round(self.item.position.pw1, 2)],
            [round(self.container.position.pw0, 2), round(self.container.position.pw1, 2)],
        ]
