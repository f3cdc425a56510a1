"""Detections of many frames -> one record per physical object.

The arm sees each object on several consecutive frames. :func:`merge` groups the
located detections of one class by constrained single-linkage agglomeration:

0. on each frame, of two boxes of one class one of which lies mostly inside the other
   (:data:`CONTAINED_IOA` of its area), the less confident is dropped
   (:func:`suppress_contained`): objects of one class do not nest, so the pair is the
   detector's two guesses at one object (a part of it, such as half a domino, a shifted
   second box, or a table region around a container), which IoU-based NMS keeps (their
   IoU is small) and which would otherwise become two objects that the cannot-link rule
   keeps apart;

1. candidate links are the pairs of detections of the same class on *different* frames
   whose planar distance is below ``distance_factor * max(size_i, size_j)`` (a threshold
   scaled to the object's size: a container's estimates scatter more than an item's;
   times :data:`LEGACY_DISTANCE_SCALE` for legacy positions);
2. links are taken shortest first (Kruskal), links between confident detections (score
   at least :data:`DEFAULT_MIN_SINGLE_FRAME_SCORE`) before links to weak ones, so a
   stray low-score box cannot take a frame slot of a real object; a link joins two
   groups only if they have no frame in common (cannot-link: two detections of one
   frame are never one object, docs/design.rst), so two objects seen together on any frame
   never merge, however close their estimates are; a detection still alone afterwards
   may join the nearest compatible group within :data:`SINGLETON_REACH` times the
   threshold (the first or last frame of an object's sweep, past a missed frame);
3. each group becomes one :class:`~sorterbot_cloud.structures.ArmObject`: position the
   weighted mean of its detections' positions (weights: score, lowered for boxes cut by
   the image border, see :mod:`sorterbot_cloud.geometry`); in calibrated mode replaced
   by the position of one 3D shape fitted to all the object's boxes
   (:func:`~sorterbot_cloud.geometry.refine.refine_objects`), which resolves what single boxes
   cannot (height against depth); item embedding the weighted mean re-normalised,
   score the highest detection score;
4. a group of at most :data:`MAX_NOISE_FRAMES` detections, none scoring
   ``min_single_frame_score``, is dropped as noise: a real object is on several frames
   (an object stays in view for about 13 frames of the reference sweep), and one or two
   low-confidence boxes are most likely false positives or duplicate boxes that the
   cannot-link rule kept apart;
5. when the session's frames are given, an object seen on too few of the frames that
   should show it is dropped (view support, :func:`view_support`): the multi-view form of
   a tracker's track confirmation. A real object is detected on most frames whose view
   holds its centre; a false positive (a distractor or a patch of table taken for a
   container for a few frames) is not, however confident its boxes;
6. objects are numbered items first, then containers, each by ``theta_deg`` then
   ``r_mm`` (deterministic).

Single linkage suits the session's geometry: an object's estimate drifts a little from
frame to frame (legacy mode in particular, whose rotation model is approximate), but
neighbouring frames stay close, so the chain follows the drift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.config import Settings
from sorterbot_cloud.geometry import LocatedDetection, ObjectShape, locate_groups, refine_objects
from sorterbot_cloud.structures import (
    CONTAINER_CLASS_ID,
    ITEM_CLASS_ID,
    ArmObject,
    PolarPoint,
    box_areas,
    pairwise_ioa,
)

#: Default share of the larger object size within which two detections may be one object
#: (the service's setting ``dedup_distance_factor``).
DEFAULT_DISTANCE_FACTOR = Settings.dedup_distance_factor
#: Detections below this score are weak: linked last, and a group of at most
#: :data:`MAX_NOISE_FRAMES` of them is dropped as noise.
DEFAULT_MIN_SINGLE_FRAME_SCORE = 0.6
#: Legacy positions scatter more (their rotation model is approximate, see
#: :mod:`sorterbot_cloud.geometry`): their link threshold is this much larger.
LEGACY_DISTANCE_SCALE = 1.7
#: Groups of at most this many detections, all below ``min_single_frame_score``, are noise.
MAX_NOISE_FRAMES = 2
#: A detection left alone after linking may join a group within this multiple of the
#: link threshold.
SINGLETON_REACH = 2.0
#: A multi-frame fit may move an object from its averaged position by up to its size,
#: or this much for small objects (mm); a larger move means the fit failed.
MIN_REFINE_SHIFT_MM = 30.0
#: Default least view support per class id (:func:`view_support`). First measured on the
#: demo session (seed 20200425) with the first shipped detector weights: real objects
#: 0.52..1.08 (items far from the base are missed on some frames), false containers
#: 0.12..0.37. With an earlier shipped detector, on the tuning sessions (74 laid out, seeds
#: 3000.. held-out and 9000.. known kinds, calibrated mode; the trigger replayed on their
#: stored detections) real containers had 0.80..1.0
#: and the three false containers that survived the old bar of 0.5 had 0.51..0.56; every
#: bar in 0.6..0.8 kept all real containers and dropped all three (0.85 lost real ones).
#: The container bar is 0.6, the low end: legacy sessions whose camera is not the
#: reference one count frames by a bearing window, which over-counts the frames that
#: show a container near the end of the sweep (a real container on 8 of 11 "expected"
#: frames, support 0.67, tests/unit/test_dedup.py). Items get a lower bar: missing a
#: real item costs a whole pick, a phantom item only a wasted move.
DEFAULT_MIN_VIEW_SUPPORT = {ITEM_CLASS_ID: Settings.dedup_min_view_support_item,
                            CONTAINER_CLASS_ID: Settings.dedup_min_view_support_container}
#: Least median view support over a legacy session's objects for the camera assumed in
#: legacy mode (``merge(legacy_camera=...)``) to be used; below it, the bearing window.
MIN_ASSUMED_CAMERA_SUPPORT = 0.5
#: View support is only judged for objects that at least this many frames should show
#: (an object at the end of the sweep, on one or two frames, has no evidence either way).
MIN_EXPECTED_FRAMES = 3
#: Two boxes of one class and frame, the smaller with at least this share of its area
#: inside the larger, are one object: the less confident is dropped (:func:`suppress_contained`).
#: Was 0.8; on a tuning session (seed 3014) the detector boxed one domino twice on a frame
#: (IoU 0.47, just under NMS; 74 % of the smaller box inside the larger), and since two
#: detections of one frame are never merged, legacy mode kept the domino as two objects.
#: Replaying the trigger on the 74 tuning sessions (seeds 3000.. and 9000..) in both
#: modes, 0.6..0.7 fixed it and changed nothing else; 0.65 is the middle.
CONTAINED_IOA = 0.65
#: Least share of the smaller box inside the larger, on every frame two nearby groups
#: share, for :func:`merge_part_groups` to join them (None: off).
#: Chosen on 160 tuning sessions (seeds 3000.., 3040.., 9000.., 9040..; the trigger
#: replayed on their stored detections): 0.2 joined the part-box groups of three sessions
#: in calibrated mode (dominoes boxed as two halves, 20-65 % of the smaller inside the
#: other; counts exact 96.9 -> 98.8 %) and changed no other outcome; 0.1 joined two
#: neighbours as well in legacy mode, where the join is now off.
PART_BOX_MIN_IOA: float | None = 0.2
#: Legacy mode has no camera model: a frame is taken to show bearings within this quantile
#: of the session's own spread ``abs(theta_deg(detection) - theta_deg(frame))``.
LEGACY_VIEW_QUANTILE = 0.95


@dataclass(frozen=True)
class FrameView:
    """One frame of a session, as the view-support check needs it.

    Parameters
    ----------
    image_name : str
    pw0 : float
        Base servo pulse width (µs) the frame was taken at.
    width_px, height_px : int
        Frame size in pixels.
    """

    image_name: str
    pw0: float
    width_px: int
    height_px: int


class _DisjointSets:
    """Union-find over detection indices, each set carrying its frame names."""

    def __init__(self, frames: list[str]):
        self.parent = list(range(len(frames)))
        self.frames = [{f} for f in frames]

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union_if_compatible(self, i: int, j: int) -> bool:
        ri, rj = self.find(i), self.find(j)
        if ri == rj:
            return True
        if self.frames[ri] & self.frames[rj]:
            return False
        if ri > rj:  # keep the smaller index as root: deterministic
            ri, rj = rj, ri
        self.parent[rj] = ri
        self.frames[ri] |= self.frames[rj]
        self.frames[rj] = set()
        return True


def group(located: list[LocatedDetection], distance_factor: float = DEFAULT_DISTANCE_FACTOR) -> list[list[int]]:
    """Group located detections into physical objects (steps 1-2 of the module docstring).

    Parameters
    ----------
    located : list of LocatedDetection
    distance_factor : float
        Two detections may link when closer than ``distance_factor * max(size_i, size_j)``.

    Returns
    -------
    list of list of int
        Indices into ``located``, one list per group, each sorted; groups sorted by their
        first index. No group holds two detections of one frame or of two classes.

    Raises
    ------
    ValueError
        If ``distance_factor`` is not a positive finite number.
    """
    if not (isinstance(distance_factor, (int, float)) and math.isfinite(distance_factor) and distance_factor > 0):
        raise ValueError(f"distance_factor must be a positive number, got {distance_factor!r}")
    n = len(located)
    if n == 0:
        return []
    xy = np.array([[d.x_mm, d.y_mm] for d in located], dtype=np.float64)
    size = np.array([d.size_mm for d in located], dtype=np.float64)
    cls = np.array([d.class_id for d in located])
    frames = [d.image_name for d in located]
    frame_codes = np.unique(frames, return_inverse=True)[1]
    dist = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=2)
    legacy = np.array([d.constants is None or not d.constants.calibrated for d in located])
    scale = np.where(legacy, LEGACY_DISTANCE_SCALE, 1.0)
    scaled = size * scale
    limit = distance_factor * np.maximum(scaled[:, None], scaled[None, :])
    ii, jj = np.nonzero(
        np.triu((dist < limit) & (cls[:, None] == cls[None, :]) & (frame_codes[:, None] != frame_codes[None, :]), k=1)
    )
    scores = np.array([d.detection.score for d in located], dtype=np.float64)
    weak = (scores[ii] < DEFAULT_MIN_SINGLE_FRAME_SCORE) | (scores[jj] < DEFAULT_MIN_SINGLE_FRAME_SCORE)
    # confident links first, each kind shortest first; ties by index: deterministic
    order = np.lexsort((jj, ii, dist[ii, jj], weak))
    sets = _DisjointSets(frames)
    for k in order:
        sets.union_if_compatible(int(ii[k]), int(jj[k]))
    # a detection left alone (e.g. past a missed frame at the end of an object's sweep,
    # where legacy positions drift most) joins the nearest compatible group within a
    # looser threshold
    for i in np.argsort(size, kind="stable"):
        i = int(i)
        if len(sets.frames[sets.find(i)]) != 1:  # a group holds one detection per frame
            continue
        candidates = [
            (dist[i, j], j)
            for j in range(n)
            if j != i and cls[j] == cls[i] and dist[i, j] < SINGLETON_REACH * limit[i, j] and image_frames_free(sets, j, frames[i])
        ]
        if candidates:
            sets.union_if_compatible(i, min(candidates)[1])
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(sets.find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def merge_part_groups(located: list[LocatedDetection], groups: list[list[int]], distance_factor: float = DEFAULT_DISTANCE_FACTOR,
                      min_ioa: float | None = None, class_ids: Sequence[int] = (ITEM_CLASS_ID,)) -> list[list[int]]:
    """Join groups that are one object boxed twice on the frames they share.

    :func:`group` never links two detections of one frame, so when the detector boxes
    parts of one object as well as (or instead of) the whole on some frames (a domino
    boxed as its two halves), the part boxes form a second group next to the first. Two
    groups of one class are joined when their weighted mean positions are within the link
    threshold (``distance_factor`` times the larger of their median sizes: two distinct
    objects that close would overlap on the table) and, on every frame both hold, the
    smaller box lies at least ``min_ioa`` inside the larger. On a shared frame only the
    larger box is kept (a part is smaller than the whole). Groups sharing no frame are
    left to :func:`group`. Pairs are joined closest first, repeatedly. Calibrated mode
    only: legacy positions scatter too much to tell two neighbours from one object
    boxed twice (on simulated legacy sessions, ``tests/unit/test_dedup.py``, joining
    merged distinct neighbours).

    Parameters
    ----------
    located : list of LocatedDetection
    groups : list of list of int
        From :func:`group`.
    distance_factor : float
    min_ioa : float, optional
        Default :data:`PART_BOX_MIN_IOA` (None there, or a value above 1, disables joining).
    class_ids : sequence of int
        Classes whose groups may be joined (items: containers stand close together, and
        their boxes on one frame often overlap).

    Returns
    -------
    list of list of int
        Groups (each sorted), sorted by their first index; one detection per frame each
        (the smaller box of a shared frame is in none: dropped as a part); ``groups``
        unchanged in legacy mode.
    """
    min_ioa = PART_BOX_MIN_IOA if min_ioa is None else min_ioa
    groups = [sorted(g) for g in groups]
    if min_ioa is None or min_ioa > 1 or len(groups) < 2 or any(d.constants is None or not d.constants.calibrated for d in located):
        return groups

    def summary(g):
        w = np.array([max(located[i].weight, 1e-9) for i in g])
        xy = np.average([[located[i].x_mm, located[i].y_mm] for i in g], axis=0, weights=w)
        return xy, float(np.median([located[i].size_mm for i in g])), {located[i].image_name: i for i in g}

    def box(i):
        return np.asarray(located[i].detection.box_xyxy, np.float64).reshape(4)

    def area(b):
        return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)

    while True:
        info = [summary(g) for g in groups]
        best = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if located[groups[a][0]].class_id != located[groups[b][0]].class_id or located[groups[a][0]].class_id not in class_ids:
                    continue
                (xy_a, size_a, fr_a), (xy_b, size_b, fr_b) = info[a], info[b]
                shared = fr_a.keys() & fr_b.keys()
                dist = float(np.hypot(*(xy_a - xy_b)))
                if not shared or dist >= distance_factor * max(size_a, size_b):
                    continue
                ok = True
                for f in shared:
                    ba, bb = box(fr_a[f]), box(fr_b[f])
                    inter = max(min(ba[2], bb[2]) - max(ba[0], bb[0]), 0.0) * max(min(ba[3], bb[3]) - max(ba[1], bb[1]), 0.0)
                    if inter < min_ioa * max(min(area(ba), area(bb)), 1e-9):
                        ok = False
                        break
                if ok and (best is None or dist < best[0]):
                    best = (dist, a, b)
        if best is None:
            return sorted(groups, key=lambda g: g[0])
        _, a, b = best
        fr_a, fr_b = info[a][2], info[b][2]
        keep = [i for f, i in fr_a.items() if f not in fr_b or area(box(i)) >= area(box(fr_b[f]))]
        keep += [i for f, i in fr_b.items() if f not in fr_a or area(box(i)) > area(box(fr_a[f]))]
        groups = [g for k, g in enumerate(groups) if k not in (a, b)] + [sorted(keep)]


def image_frames_free(sets: _DisjointSets, j: int, frame: str) -> bool:
    """Whether the group of detection ``j`` has no detection on ``frame``."""
    return frame not in sets.frames[sets.find(j)]


def merge(
    located: list[LocatedDetection],
    distance_factor: float = DEFAULT_DISTANCE_FACTOR,
    constants: ArmConstants | None = None,
    min_single_frame_score: float = DEFAULT_MIN_SINGLE_FRAME_SCORE,
    refine: bool = True,
    frames: Sequence[FrameView] | None = None,
    min_view_support: Mapping[int, float] | None = None,
    legacy_camera: ArmConstants | None = None,
    legacy_placed: Mapping[int, LocatedDetection] | None = None,
) -> list[ArmObject]:
    """Merge located detections of a session into one object per physical object.

    Parameters
    ----------
    located : list of LocatedDetection
        All detections of one session (both classes), from :func:`geometry.locate <sorterbot_cloud.geometry.placement.locate>`.
    distance_factor : float
        Link threshold as a share of the larger estimated object size (``Settings.dedup_distance_factor``).
    constants : ArmConstants, optional
        Default: the constants the detections were located with. In calibrated mode, turns the merged position into pulse widths
        (``pw0_of_theta``, ``pw1_of_r``). Otherwise (legacy, or not given) pulse widths
        are the weighted means of the detections' pulse widths (legacy: the original
        formulas' values; calibrated: within a fraction of a µs of the exact mapping).
    min_single_frame_score : float
        A group of at most :data:`MAX_NOISE_FRAMES` detections is kept only when one of
        them scores at least this.
    refine : bool
        In calibrated mode, place each object by fitting one 3D shape to all its boxes
        (:func:`geometry.refine_objects <sorterbot_cloud.geometry.refine.refine_objects>`) instead of averaging single-frame estimates.
    frames : sequence of FrameView, optional
        Every frame of the session, those without detections included. When given,
        objects whose :func:`view_support` is below ``min_view_support`` are dropped.
    min_view_support : mapping of int to float, optional
        Least view support per class id; default :data:`DEFAULT_MIN_VIEW_SUPPORT`.
    legacy_camera : ArmConstants, optional
        Calibrated constants assumed in legacy mode (e.g. the reference arm's, with the
        session's rotation range) to decide which frames should show each object: its
        detections are placed through that camera and the frames whose view holds the
        place are counted, as in calibrated mode, instead of the bearing window of
        :func:`view_support`, provided the median view support it gives the session's
        objects is at least :data:`MIN_ASSUMED_CAMERA_SUPPORT` (else the camera does not
        fit this arm and the bearing window is used). Positions and pulse widths stay
        the legacy formulas'.
    legacy_placed : mapping of int to LocatedDetection, optional
        The session's detections already placed through ``legacy_camera``
        (:func:`geometry.locate <sorterbot_cloud.geometry.placement.locate>`), by ``detection_id``: the trigger places them once and
        also measures the items' shapes from them (``trigger.with_nominal_shapes``).
        Default: placed here, one batched fit of the kept groups' detections.

    Returns
    -------
    list of ArmObject
        Items first, then containers, each ordered by ``theta_deg`` then ``r_mm``;
        ``object_id`` is the index in this list.

    Raises
    ------
    ValueError
        If ``distance_factor`` is not positive.
    """
    if constants is None and located:
        constants = located[0].constants
    located = suppress_contained(located, class_ids=(ITEM_CLASS_ID, CONTAINER_CLASS_ID))
    kept = []
    for members in merge_part_groups(located, group(located, distance_factor), distance_factor):
        dets = [located[i] for i in members]
        if len(dets) <= MAX_NOISE_FRAMES and max(d.detection.score for d in dets) < min_single_frame_score:
            continue
        kept.append(dets)
    shapes = refine_objects(kept, constants) if constants is not None and constants.calibrated and refine else [None] * len(kept)
    objects = [merge_group(dets, constants, shape) for dets, shape in zip(kept, shapes, strict=True)]
    if frames and constants is not None:
        bars = dict(DEFAULT_MIN_VIEW_SUPPORT if min_view_support is None else min_view_support)
        expected = None
        if not constants.calibrated and legacy_camera is not None and legacy_camera.calibrated and kept:
            # where each object is, seen through the assumed camera, decides which frames show it
            if legacy_placed is None:
                placed = locate_groups([[d.detection for d in dets] for dets in kept], legacy_camera)  # one batched fit
            else:
                placed = [[legacy_placed[d.detection.detection_id] for d in dets] for dets in kept]
            nominal = [merge_group(dets, legacy_camera) for dets in placed]
            expected = _frames_showing(nominal, frames, legacy_camera, None)
            # trusted only if it explains the session: its typical object is seen on most
            # of the frames the camera says should show it (another mount or frame
            # spacing would leave every object under-supported)
            if np.median([_support(dets, n) for dets, n in zip(kept, expected, strict=True)]) < MIN_ASSUMED_CAMERA_SUPPORT:
                expected = None
        if expected is None:
            expected = _frames_showing(objects, frames, constants, _legacy_window_deg(located, constants))
        objects = [
            obj
            for obj, dets, n in zip(objects, kept, expected, strict=True)
            if n < MIN_EXPECTED_FRAMES or _support(dets, n) >= bars.get(obj.class_id, 0.0)
        ]
    objects.sort(key=lambda o: (o.class_id != ITEM_CLASS_ID, o.class_id, round(o.position.theta_deg, 6), round(o.position.r_mm, 6), min(o.detection_ids)))
    for object_id, obj in enumerate(objects):
        obj.object_id = object_id
    return objects


def suppress_contained(
    located: Sequence[LocatedDetection], min_ioa: float = CONTAINED_IOA, class_ids: Sequence[int] = (CONTAINER_CLASS_ID,)
) -> list[LocatedDetection]:
    """Of two boxes of one class and frame, one mostly inside the other, drop the less confident.

    Parameters
    ----------
    located : sequence of LocatedDetection
    min_ioa : float
        Least intersection over the smaller box's own area (IoA) for it to be dropped.
    class_ids : sequence of int
        Classes the rule applies to; default containers only. :func:`merge` applies it to
        items too: there the risk is a loose box around two touching items scoring above
        both items' own boxes; measured on 40 simulated sessions x 2 modes with the
        first shipped detector weights (``evaluate-sessions --kinds known`` and ``--kinds heldout``),
        adding items raised counts exact from 57 % to 63 % and sorted correctly from
        52 % to 56 % (part-boxes of elongated held-out items).

    Returns
    -------
    list of LocatedDetection
        ``located`` without the dropped boxes, order kept.
    """
    by_frame: dict[tuple[str, int], list[int]] = {}
    for i, d in enumerate(located):
        if d.class_id in class_ids:
            by_frame.setdefault((d.image_name, d.class_id), []).append(i)
    dropped: set[int] = set()
    for members in by_frame.values():
        if len(members) < 2:
            continue
        boxes = np.array([np.asarray(located[i].detection.box_xyxy, np.float64).reshape(4) for i in members])
        scores = np.array([located[i].detection.score for i in members])
        area = box_areas(boxes)
        ioa = pairwise_ioa(boxes, boxes).T  # [a, b]: share of box a inside box b
        for a in range(len(members)):
            for b in range(len(members)):
                if a != b and ioa[a, b] >= min_ioa and area[b] > area[a]:
                    # the pair is one object seen twice: keep the more confident box
                    dropped.add(members[a] if scores[b] >= scores[a] else members[b])
    return [d for i, d in enumerate(located) if i not in dropped]


def view_support(
    obj: ArmObject,
    dets: Sequence[LocatedDetection],
    frames: Sequence[FrameView],
    constants: ArmConstants,
    legacy_window_deg: float | None = None,
) -> tuple[float, int]:
    """How well an object's detections cover the frames that should show it.

    ``support = sum(scores of the object's detections) / expected``, where ``expected``
    counts the session's frames whose view holds the object's centre. Calibrated mode
    projects the centre (``x_mm, y_mm`` on the table, z = 0) with the camera model and
    counts frames where it lands inside the image in front of the camera. Legacy mode has
    no camera: a frame counts when the object's bearing is within ``legacy_window_deg``
    of the frame's base angle (:data:`LEGACY_VIEW_QUANTILE` of the session's own spread).

    Parameters
    ----------
    obj : ArmObject
        The merged object.
    dets : sequence of LocatedDetection
        Its detections.
    frames : sequence of FrameView
        All frames of the session.
    constants : ArmConstants
    legacy_window_deg : float, optional
        Half-width (degrees) of a frame's view in legacy mode; default 31.1, half the
        horizontal field of view of the reference camera (:meth:`CameraModel.reference`).

    Returns
    -------
    support : float
        >= 0; about 1 for an object detected on every frame that shows it (more when it
        is also detected with its centre just outside a frame).
    expected : int
        Number of frames whose view holds the object's centre.
    """
    expected = int(_frames_showing([obj], frames, constants, legacy_window_deg)[0])
    return _support(dets, expected), expected


def _support(dets: Sequence[LocatedDetection], expected: int) -> float:
    """Summed detection score per frame that should show the object (:func:`view_support`)."""
    return float(sum(d.detection.score for d in dets)) / max(int(expected), 1)


def _frames_showing(
    objects: Sequence[ArmObject], frames: Sequence[FrameView], constants: ArmConstants, legacy_window_deg: float | None
) -> np.ndarray:
    """Number of ``frames`` whose view holds each object's centre, shape (N,) int64 (:func:`view_support`).

    Calibrated mode projects all centres with one camera call per frame.
    """
    if constants.calibrated:
        camera = constants.camera
        centres = np.array([[o.x_mm, o.y_mm, 0.0] for o in objects], dtype=np.float64).reshape(-1, 3)
        counts = np.zeros(len(centres), np.int64)
        for f in frames:
            u, v, depth = camera.project(centres, constants.theta_of_pw(f.pw0), f.width_px, f.height_px).T
            counts += (depth > 0) & (u >= 0) & (u < f.width_px) & (v >= 0) & (v < f.height_px)
        return counts
    half = 31.1 if legacy_window_deg is None else legacy_window_deg
    thetas = np.array([constants.theta_of_pw(f.pw0) for f in frames], dtype=np.float64)
    bearings = np.array([o.position.theta_deg for o in objects], dtype=np.float64)
    delta = (bearings[:, None] - thetas[None, :] + 180.0) % 360.0 - 180.0
    return np.count_nonzero(np.abs(delta) <= half, axis=1).astype(np.int64)


def _legacy_window_deg(located: Sequence[LocatedDetection], constants: ArmConstants) -> float | None:
    """Half-width of a frame's view in legacy bearings, from the session's detections."""
    if constants.calibrated or len(located) < 10:
        return None
    delta = np.array([d.theta_deg - constants.theta_of_pw(d.detection.frame_pw0) for d in located])
    delta = (delta + 180.0) % 360.0 - 180.0
    return float(np.quantile(np.abs(delta), LEGACY_VIEW_QUANTILE))


def merge_group(dets: list[LocatedDetection], constants: ArmConstants | None, shape: ObjectShape | None = None) -> ArmObject:
    """One ArmObject from the detections of one physical object (and its fitted shape).

    Position: the weighted mean of the single-frame estimates (weights: score, lowered for
    boxes cut by the border), replaced by the fitted ``shape``'s when it lies within the
    object's size (or :data:`MIN_REFINE_SHIFT_MM`) of that mean; size and height likewise
    (calibrated mode; legacy: size in pixels, no height). Embedding: the weighted mean of
    the detections' embeddings, re-normalised. Colour: the weighted mean of the detections'
    CIELab colours, when every detection has one.

    Parameters
    ----------
    dets : list of LocatedDetection
        One object's detections (at most one per frame), non-empty.
    constants : ArmConstants or None
        Calibrated constants give pulse widths from the position; otherwise the weighted
        mean of the detections' pulse widths.
    shape : ObjectShape, optional
        From :func:`geometry.refine_objects <sorterbot_cloud.geometry.refine.refine_objects>`.

    Returns
    -------
    ArmObject
        With ``object_id = -1`` (numbered by :func:`merge`).
    """
    weights = np.array([d.weight for d in dets], dtype=np.float64)
    if not weights.sum() > 0:
        weights = np.ones(len(dets))
    weights = weights / weights.sum()
    x_mm = float(np.dot(weights, [d.x_mm for d in dets]))
    y_mm = float(np.dot(weights, [d.y_mm for d in dets]))
    # size: prefer boxes not cut by the border (a cut box under-estimates the size)
    whole = [d for d in dets if not d.truncated] or dets
    size_w = np.array([max(d.weight, 1e-9) for d in whole])
    size_mm = float(np.dot(size_w / size_w.sum(), [d.size_mm for d in whole]))
    calibrated = constants is not None and constants.calibrated
    height_mm = float(np.dot(size_w / size_w.sum(), [d.height_mm for d in whole])) if calibrated else None
    if shape is not None and math.hypot(shape.x_mm - x_mm, shape.y_mm - y_mm) <= max(size_mm, MIN_REFINE_SHIFT_MM):
        x_mm, y_mm, size_mm, height_mm = shape.x_mm, shape.y_mm, shape.size_mm, shape.height_mm
    r_mm = math.hypot(x_mm, y_mm)
    theta_deg = math.degrees(math.atan2(y_mm, x_mm))
    if calibrated:
        pw0 = constants.pw0_of_theta(theta_deg)
        pw1 = constants.pw1_of_r(r_mm)
    else:  # legacy: keep the original formulas' pulse widths
        pw0 = float(np.dot(weights, [d.pw0 for d in dets]))
        pw1 = float(np.dot(weights, [d.pw1 for d in dets]))
    embeddings = [(w, d.detection.embedding) for w, d in zip(weights, dets, strict=True) if d.detection.embedding is not None]
    embedding = None
    if embeddings:
        dims = {np.size(e) for _, e in embeddings}
        if len(dims) == 1:
            stacked = np.stack([np.asarray(e, np.float64).reshape(-1) for _, e in embeddings])
            ew = np.array([w for w, _ in embeddings]) + 1e-12
            mean = (ew[:, None] * stacked).sum(0)
            norm = np.linalg.norm(mean)
            embedding = (mean / norm if norm > 0 else mean).astype(np.float32)
    colour_lab = None
    colours = [d.detection.colour_lab for d in dets]
    if colours and all(c is not None and np.size(c) == 3 for c in colours):
        colour_lab = (weights @ np.stack([np.asarray(c, np.float64).reshape(3) for c in colours])).astype(np.float32)
    return ArmObject(
        object_id=-1,
        class_id=dets[0].class_id,
        position=PolarPoint(r_mm=r_mm, theta_deg=theta_deg, pw0=pw0, pw1=pw1),
        x_mm=x_mm,
        y_mm=y_mm,
        size_mm=size_mm,
        score=float(max(d.detection.score for d in dets)),
        detection_ids=sorted(int(d.detection.detection_id) for d in dets),
        embedding=embedding,
        height_mm=height_mm,
        colour_lab=colour_lab,
    )
