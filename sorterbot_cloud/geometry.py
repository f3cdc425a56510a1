"""Pixels to arm coordinates: where on the table is the object behind a box?

Two conversions (docs/design.rst, Arm constants and geometry):

- **legacy** (the constants carry no ``camera`` block): the original SorterBot formulas.
  With ``a = |W/2 - x|``, ``b = H/2 - y`` (box centre ``(x, y)``), ``R = arm_radius``
  (pixels), ``gamma = atan(a / (b + R))`` and ``d = sqrt(a^2 + (b + R)^2)``:
  ``pw0 = p0 + s * rotation_range_as_pw * gamma_deg / rotation_range_as_deg`` with
  ``s = -1`` when ``x > W/2`` else ``+1``, and
  ``pw1 = dist_min_as_pw + (dist_max_as_pw - dist_min_as_pw) * (d - (R - H/2)) / H``.
  ``pw0``/``pw1`` are exactly these values. For deduplication and planning each legacy
  detection also gets a planar position in *legacy pixel units* (not millimetres): the
  absolute angle ``theta_deg = theta_frame + k * gamma_deg`` (``theta_frame`` the
  frame's angle ``ArmConstants.theta_of_pw(p0)``, ``k`` a per-session scale that keeps
  objects still from frame to frame, see :func:`_legacy_angle_scale`; ``k = 1`` gives
  ``theta_of_pw(pw0)``) and the distance ``r_mm = d`` give ``x_mm = d cos theta``,
  ``y_mm = d sin theta``; ``size_mm`` is the larger side of the box in pixels. These are
  consistent within one session, which is all dedup and the planner need; the ``_mm``
  suffix keeps one schema for both modes.

- **calibrated** (a :class:`~sorterbot_cloud.camera.CameraModel` is given): the object's
  ground footprint centre on ``z = 0`` is estimated from its box by fitting an upright
  elliptic prism (width ``a`` across the viewing direction, depth ``b`` along it, height
  ``h``, centre ``(x, y)``) whose projected silhouette has the same box
  (:func:`fit_prisms`). The box bottom is the footprint's near edge, the box top the far
  edge of its top, the box width its widest section; sides cut by the image border are
  left out and weak priors (:data:`FIT_PRIORS`) decide what one box cannot: how its
  vertical extent splits into depth and height. Boxes touching the border also get a
  lower averaging weight. ``pw0``/``pw1`` follow from ``theta_deg`` and ``r_mm`` with
  :meth:`ArmConstants.pw0_of_theta` and :meth:`ArmConstants.pw1_of_r`.

  After deduplication, :func:`refine_objects` fits one 3D shape (cuboid with yaw,
  rounded bowl -- a solid of revolution whose wall is a quarter ellipse, a cylinder when
  its radii agree -- or sphere; :data:`REFINE_MODELS`) to *all* boxes of an object across frames. The arm's
  rotation moves the camera on a circle and the object across the image, and only the
  true height and depth project to every box, so this resolves the single-box
  ambiguity: on the simulator catalogue the position error drops from p95 ~25 mm
  (single-frame averages) to ~5 mm.

Why not the box centre: the centre of the box back-projected to the table is biased
outwards by the object's height (its top hides ground beyond the footprint), by up to
``h / tan(depression)`` (tens of millimetres for a 60 mm container); stepping from the
near edge by half the box width instead over-shoots by the perspective enlargement of
the (nearer) top and fails on bowls (rim wider than base). The shape fits model both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from sorterbot_cloud.camera import ArmConstants, CameraModel
from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.structures import CONTAINER_CLASS_ID, ITEM_CLASS_ID, StoredDetection

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
#: Gauss-Newton (Levenberg-Marquardt) iterations of the calibrated fit.
_FIT_ITERATIONS = 12


@dataclass(frozen=True)
class LocatedDetection:
    """One stored detection placed on the table.

    Parameters
    ----------
    detection : StoredDetection
        The detection as read from the store.
    x_mm, y_mm : float
        Estimated footprint centre in the world frame (calibrated: millimetres; legacy:
        legacy pixel units, see the module docstring).
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
        return _locate_legacy(detections, boxes, sizes, constants)
    return _locate_calibrated(detections, boxes, sizes, constants)


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


def _truncation(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Which sides (left, top, right, bottom) are cut by the border: bool (N, 4).

    A side counts as cut within ``max(BORDER_MARGIN_PX, BORDER_MARGIN_REL * extent)``
    pixels of the border, ``extent`` the box's width (left, right) or height (top, bottom).
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


def legacy_pulse_widths(box_xyxy: np.ndarray, width_px: int, height_px: int, frame_pw0: float, constants: ArmConstants) -> tuple[float, float, float, float]:
    """The original SorterBot conversion of one box (docs/design.rst, legacy conversion).

    Parameters
    ----------
    box_xyxy : ndarray of shape (4,), pixels
    width_px, height_px : int
        Frame size W, H.
    frame_pw0 : float
        Base pulse width p0 (µs) of the frame.
    constants : ArmConstants
        Uses ``arm_radius`` (pixels), the rotation ranges and ``dist_min/max_as_pw``.

    Returns
    -------
    pw0, pw1 : float
        Pick pulse widths (µs).
    gamma_deg : float
        Signed angle of the object away from the frame's centre line (+ left of it).
    d_px : float
        Distance of the box centre from the assumed arm axis (pixels).
    """
    x = (box_xyxy[0] + box_xyxy[2]) / 2
    y = (box_xyxy[1] + box_xyxy[3]) / 2
    a = abs(width_px / 2 - x)
    b = height_px / 2 - y
    big_r = constants.arm_radius
    gamma_deg = math.degrees(math.atan2(a, b + big_r))
    d_px = math.hypot(a, b + big_r)
    s = -1.0 if x > width_px / 2 else 1.0
    pw0 = frame_pw0 + s * constants.rotation_range_as_pw * gamma_deg / constants.rotation_range_as_deg
    pw1 = constants.dist_min_as_pw + (constants.dist_max_as_pw - constants.dist_min_as_pw) * (d_px - (big_r - height_px / 2)) / height_px
    return pw0, pw1, s * gamma_deg, d_px


#: Candidate scales of the legacy angle for the planar dedup position (see :func:`_legacy_angle_scale`).
LEGACY_ANGLE_SCALES = tuple(np.round(np.arange(0.5, 2.001, 0.05), 2))


def _legacy_angle_scale(frame_theta_deg, gamma_deg, d_px, size_px, class_ids, pws) -> float:
    """Scale ``k`` of the legacy angle that keeps objects still from frame to frame.

    The legacy model's angle ``gamma`` of an object off the frame's centre line is only
    proportional to the true one (its ``arm_radius`` is a rough stand-in for the camera's
    focal length and mounting), so ``theta_frame + gamma`` drifts as an object crosses the
    image, by up to several object sizes over a sweep. For deduplication only, the planar
    position uses ``theta_frame + k * gamma`` with the ``k`` (from
    :data:`LEGACY_ANGLE_SCALES`) that minimises the median size-normalised distance
    from each detection to the nearest detection of the same class on the next frame.
    ``k = 1`` when fewer than two frames hold detections.
    """
    frames, frame_index = np.unique(pws, return_inverse=True)
    if len(frames) < 2:
        return 1.0
    # every (detection, detection of the same class on the next frame) pair, grouped by the first
    rows, cols = np.nonzero((frame_index[None, :] == frame_index[:, None] + 1) & (class_ids[:, None] == class_ids[None, :]))
    if len(rows) == 0:
        return 1.0
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])  # rows come sorted from np.nonzero
    scales = np.asarray(LEGACY_ANGLE_SCALES, float)
    t = np.radians(frame_theta_deg[None, :] + scales[:, None] * gamma_deg[None, :])  # (K, N)
    x, y = d_px * np.cos(t), d_px * np.sin(t)
    dx, dy = x[:, rows] - x[:, cols], y[:, rows] - y[:, cols]
    dist = np.sqrt(dx * dx + dy * dy)  # (K, pairs); np.hypot is several times slower
    costs = np.median(np.minimum.reduceat(dist, starts, axis=1) / size_px[rows[starts]], axis=1)  # (K,)
    best, best_cost = 1.0, np.inf
    for k, cost in zip(LEGACY_ANGLE_SCALES, costs, strict=True):
        if cost < best_cost - 1e-9 or (abs(cost - best_cost) <= 1e-9 and abs(k - 1) < abs(best - 1)):
            best, best_cost = float(k), float(cost)
    return best


def _locate_legacy(detections, boxes, sizes, constants: ArmConstants) -> list[LocatedDetection]:
    truncated = _truncation(boxes, sizes).any(axis=1)
    n = len(detections)
    pw0s, pw1s, gammas, ds = (np.zeros(n) for _ in range(4))
    for i, d in enumerate(detections):
        pw0s[i], pw1s[i], gammas[i], ds[i] = legacy_pulse_widths(boxes[i], int(sizes[i, 0]), int(sizes[i, 1]), float(d.frame_pw0), constants)
    frame_pws = np.array([float(d.frame_pw0) for d in detections])
    frame_theta = (frame_pws - constants.zero_pw) * constants.rotation_range_as_deg / constants.rotation_range_as_pw
    size_px = np.maximum(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), 1.0)
    class_ids = np.array([int(d.class_id) for d in detections])
    scale = _legacy_angle_scale(frame_theta, gammas, ds, size_px, class_ids, frame_pws)
    out = []
    for i, d in enumerate(detections):
        theta_deg = float(frame_theta[i] + scale * gammas[i])
        t = math.radians(theta_deg)
        out.append(
            LocatedDetection(
                detection=d,
                x_mm=float(ds[i] * math.cos(t)),
                y_mm=float(ds[i] * math.sin(t)),
                r_mm=float(ds[i]),
                theta_deg=theta_deg,
                pw0=float(pw0s[i]),
                pw1=float(pw1s[i]),
                size_mm=float(size_px[i]),
                weight=float(d.score) * (TRUNCATED_WEIGHT_FACTOR if truncated[i] else 1.0),
                truncated=bool(truncated[i]),
                constants=constants,
            )
        )
    return out


# ------------------------------------------------------------------------ calibrated


#: Priors of the calibrated fit, per class id: (typical footprint width mm, its log-sigma,
#: typical height mm, height sigma mm, log-sigma of depth/width). Weak: they only decide
#: what a box cannot (how its vertical extent splits into depth and height, and the size
#: behind a side cut by the border). Typical values follow the object ranges of the
#: simulator catalogue (items 15..60 mm across, containers 100..220 mm, 15..80 mm high).
FIT_PRIORS = {
    0: (30.0, 0.6, 15.0, 25.0, 0.25),
    1: (160.0, 0.35, 45.0, 20.0, 0.25),
}
#: Pixel noise assumed on a box side (pixels, one sigma).
BOX_SIGMA_PX = 1.0


def _camera_axes(camera: CameraModel, thetas: np.ndarray):
    """Per-frame forward, right, down axes (N, 3) and camera centres (N, 3)."""
    t = np.radians(thetas)
    p = math.radians(camera.pitch_deg)
    forward = np.stack([np.cos(t) * math.cos(p), np.sin(t) * math.cos(p), np.full_like(t, -math.sin(p))], axis=1)
    right = np.stack([np.sin(t), -np.cos(t), np.zeros_like(t)], axis=1)
    down = np.cross(forward, right)
    center = np.stack([camera.offset_mm * np.cos(t), camera.offset_mm * np.sin(t), np.full_like(t, camera.height_mm)], axis=1)
    return forward, right, down, center


def prism_boxes(params: np.ndarray, camera: CameraModel, thetas: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Image boxes of upright elliptic prisms facing the camera.

    Parameters
    ----------
    params : ndarray of shape (N, 5)
        ``x_mm, y_mm, a_mm, b_mm, h_mm``: footprint centre, footprint width across the
        horizontal viewing direction, footprint depth along it, height.
    camera : CameraModel
    thetas : ndarray of shape (N,), degrees
        Base angle of each detection's frame.
    sizes : ndarray of shape (N, 2)
        Frame ``(W, H)`` in pixels.

    Returns
    -------
    ndarray of shape (N, 4), float64, pixels
        ``x0, y0, x1, y1``: union of the exact boxes of the bottom and top ellipses
        (:func:`_ellipse_extremes`).
    """
    terms = _frame_terms(np.asarray(thetas, float).reshape(-1, 1), np.asarray(sizes, float).reshape(-1, 1, 2), camera)
    return _prism_boxes(params, terms, camera.height_mm * 0.8)


def _prism_boxes(params: np.ndarray, terms: _FrameTerms, max_height_mm: float) -> np.ndarray:
    """:func:`prism_boxes` on precomputed single-frame terms (N, 1, ...); heights clipped to
    ``[0, max_height_mm]``."""
    t = terms
    view = params[:, :2] - t.center[:, 0, :2]
    view /= np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-6)
    vx, vy = view[:, 0, None], view[:, 1, None]  # (N, 1)
    half_a, half_b = (np.maximum(params[:, 2], 0.5) / 2)[:, None], (np.maximum(params[:, 3], 0.5) / 2)[:, None]
    height = np.clip(params[:, 4], 0.0, max_height_mm)
    x, y = params[:, 0, None], params[:, 1, None]
    z = np.stack([np.zeros_like(height), height])[:, :, None]  # (2, N, 1): bottom and top ellipse
    # the ellipses' axes are horizontal: U = a/2 (vy, -vx, 0) across the view, V = b/2 (vx, vy, 0) along it
    coef = lambda g: (half_a * (vy * g[..., 0] - vx * g[..., 1]), half_b * (vx * g[..., 0] + vy * g[..., 1]))  # noqa: E731
    b0 = (x * t.forward[..., 0] + y * t.forward[..., 1] - t.o_f) + z * t.forward[..., 2]  # (2, N, 1)
    b1, b2 = coef(t.forward)
    sides = []
    for g, o in ((t.g_u, t.o_u), (t.g_v, t.o_v)):
        a1, a2 = coef(g)
        low, high = _ellipse_extremes((x * g[..., 0] + y * g[..., 1] - o) + z * g[..., 2], a1, a2, b0, b1, b2)
        sides.append((low.min(0)[:, 0], high.max(0)[:, 0]))
    (u0, u1), (v0, v1) = sides
    return np.stack([u0, v0, u1, v1], axis=1)


def _ground_points(uv: np.ndarray, thetas: np.ndarray, sizes: np.ndarray, camera: CameraModel) -> np.ndarray:
    """Back-project pixels (N, K, 2) of frames ``thetas`` (N,), ``sizes`` (N, 2) onto z = 0: (N, K, 2) mm.

    Pixels at or above the horizon are moved to the frame's lowest row first.
    """
    forward, right, down, center = _camera_axes(camera, thetas)
    fx = camera.fx * sizes[:, 0] / camera.calib_width
    fy = camera.fy * sizes[:, 1] / camera.calib_height
    cx = camera.cx * sizes[:, 0] / camera.calib_width
    cy = camera.cy * sizes[:, 1] / camera.calib_height
    x = (uv[:, :, 0] - cx[:, None]) / fx[:, None]
    y = (uv[:, :, 1] - cy[:, None]) / fy[:, None]
    rays = x[..., None] * right[:, None] + y[..., None] * down[:, None] + forward[:, None]  # (N, K, 3)
    above = rays[..., 2] > -1e-6
    if np.any(above):
        y_low = ((sizes[:, 1] - 1) - cy) / fy
        rays_low = x[..., None] * right[:, None] + y_low[:, None, None] * down[:, None] + forward[:, None]
        rays = np.where(above[..., None], rays_low, rays)
    t = -center[:, None, 2] / np.minimum(rays[..., 2], -1e-6)
    return center[:, None, :2] + t[..., None] * rays[..., :2]


def _initial_guess(boxes, sizes, thetas, camera: CameraModel, class_ids: np.ndarray) -> np.ndarray:
    """Near edge + half the ground width, depth = width, prior height: (N, 5)."""
    x0, x1, y1 = boxes[:, 0], boxes[:, 2], boxes[:, 3]
    uv = np.stack([np.stack([(x0 + x1) / 2, y1], 1), np.stack([x0, y1], 1), np.stack([x1, y1], 1)], axis=1)  # (N, 3, 2)
    ground = _ground_points(uv, thetas, sizes, camera)
    center = _camera_axes(camera, thetas)[3][:, :2]
    near = ground[:, 0]
    view = near - center
    view /= np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-6)
    width = np.maximum(np.linalg.norm(ground[:, 1] - ground[:, 2], axis=1), 2.0)
    h0 = np.array([FIT_PRIORS[int(c)][2] for c in class_ids], dtype=np.float64).reshape(-1)
    xy = near + view * width[:, None] / 2
    return np.stack([xy[:, 0], xy[:, 1], width, width, h0], axis=1)


def fit_prisms(
    boxes_xyxy: np.ndarray,
    sizes_px: np.ndarray,
    thetas_deg: np.ndarray,
    camera: CameraModel,
    class_ids: np.ndarray,
    truncated: np.ndarray | None = None,
    iterations: int = _FIT_ITERATIONS,
) -> np.ndarray:
    """Fit upright elliptic prisms to boxes (the calibrated position estimator).

    Maximum a posteriori fit: box sides not cut by the image border with
    :data:`BOX_SIGMA_PX` noise, plus the weak log-normal / normal priors of
    :data:`FIT_PRIORS` on width, height and depth/width ratio. Levenberg-Marquardt,
    batched over detections, numeric Jacobians.

    Parameters
    ----------
    boxes_xyxy : ndarray of shape (N, 4), pixels
    sizes_px : ndarray of shape (N, 2)
        Frame ``(W, H)``.
    thetas_deg : ndarray of shape (N,)
        Base angle of each detection's frame.
    camera : CameraModel
    class_ids : ndarray of shape (N,), int
        Selects the priors.
    truncated : ndarray of shape (N, 4), bool, optional
        Sides (left, top, right, bottom) to ignore; default from the border margin.
    iterations : int

    Returns
    -------
    ndarray of shape (N, 5), float64
        ``x_mm, y_mm, a_mm, b_mm, h_mm`` (see :func:`prism_boxes`).
    """
    boxes = np.asarray(boxes_xyxy, float).reshape(-1, 4)
    sizes = np.asarray(sizes_px, float).reshape(-1, 2)
    thetas = np.asarray(thetas_deg, float).reshape(-1)
    class_ids = np.asarray(class_ids, int).reshape(-1)
    if truncated is None:
        truncated = _truncation(boxes, sizes)
    mask = (~np.asarray(truncated, bool)).astype(float) / BOX_SIGMA_PX  # (N, 4)
    priors = np.array([FIT_PRIORS[int(c)] for c in class_ids])  # (N, 5)
    params = _initial_guess(boxes, sizes, thetas, camera, class_ids)

    terms = _frame_terms(thetas.reshape(-1, 1), sizes.reshape(-1, 1, 2), camera)  # once per fit
    tiles: dict[int, tuple] = {}

    def residuals(p: np.ndarray) -> np.ndarray:
        k = len(p) // len(boxes)  # k stacked copies of the batch (see _batched_lm)
        if k not in tiles:
            tile = lambda x: np.concatenate([x] * k, axis=0) if k > 1 else x  # noqa: E731
            tiles[k] = (terms.tiled(k), tile(boxes), tile(mask), tile(priors))
        terms_k, boxes_k, mask_k, pr = tiles[k]
        r_box = (_prism_boxes(p, terms_k, camera.height_mm * 0.8) - boxes_k) * mask_k
        a = np.maximum(p[:, 2], 0.5)
        b = np.maximum(p[:, 3], 0.5)
        r_a = np.log(a / pr[:, 0]) / pr[:, 1]
        r_h = (p[:, 4] - pr[:, 2]) / pr[:, 3]
        r_ab = np.log(b / a) / pr[:, 4]
        return np.concatenate([r_box, r_a[:, None], r_h[:, None], r_ab[:, None]], axis=1)  # (kN, 7)

    def clamp(p: np.ndarray) -> np.ndarray:
        p[:, 2:4] = np.maximum(p[:, 2:4], 1.0)
        p[:, 4] = np.clip(p[:, 4], 0.0, camera.height_mm * 0.8)
        return p

    params, _ = _batched_lm(residuals, params, np.full(5, 0.25), clamp, iterations)
    return params


def _locate_calibrated(detections, boxes, sizes, constants: ArmConstants) -> list[LocatedDetection]:
    camera = constants.camera
    thetas = np.array([constants.theta_of_pw(float(d.frame_pw0)) for d in detections])
    truncated = _truncation(boxes, sizes)
    class_ids = np.array([int(d.class_id) for d in detections])
    params = fit_prisms(boxes, sizes, thetas, camera, class_ids, truncated)
    out = []
    for i, d in enumerate(detections):
        x_mm, y_mm, a_mm, b_mm, h_mm = (float(v) for v in params[i])
        d_mm = max(a_mm, b_mm)
        r_mm = math.hypot(x_mm, y_mm)
        theta_deg = math.degrees(math.atan2(y_mm, x_mm))
        cut = bool(truncated[i].any())
        out.append(
            LocatedDetection(
                detection=d,
                x_mm=x_mm,
                y_mm=y_mm,
                r_mm=r_mm,
                theta_deg=theta_deg,
                pw0=constants.pw0_of_theta(theta_deg),
                pw1=constants.pw1_of_r(r_mm),
                size_mm=max(d_mm, 1.0),
                weight=float(d.score) * (TRUNCATED_WEIGHT_FACTOR if cut else 1.0),
                truncated=cut,
                height_mm=max(h_mm, 0.0),
                constants=constants,
            )
        )
    return out


# ------------------------------------------------- multi-frame refinement (calibrated)

#: Box noise assumed by the multi-frame refinement (pixels, one sigma). The shipped
#: detector's sides scatter by 6-12 px on containers and 2-5 px on items (1640x1232
#: frames); 2 px (the simulator's boxes) let its container boxes pull fits far off their
#: priors. Chosen on 160 tuning sessions replayed offline (seeds 3000.. and 9000.., detector
#: boxes with one refinement step, calibrated mode): position p95 averaged over the four
#: sets of 40 was 20.2 mm at 2 px, 17.6 at 4, 17.2 at 5, 17.5 at 6 (with REFINE_SCHEDULE
#: (10, 6)); 4 px keeps noise-free shapes closest (frustum centres 0.5 mm off, 1.2 at 5 px).
REFINE_SIGMA_PX = 4.0
#: Box noise of the multi-frame refinement per class id where it differs from
#: :data:`REFINE_SIGMA_PX` (pixels, one sigma). The shipped detector's container sides are
#: off by 3-9 px (median absolute error per side and container type, 160 tuning sessions),
#: items' by 1-3 px; at 4 px the container boxes outweighed the height prior and some open
#: boxes were fitted flat (height 0-10 mm) and 25-40 mm too far. With the rounded-bowl
#: model, container sigmas 4 / 6 / 8 / 10 px gave pooled position p95 13.55 / 13.47 / 13.27
#: / 13.98 mm on those sessions (the trigger replayed on their stored detections; 7 bowl
#: rings and no part-box join then; with the shipped settings 13.50 mm).
REFINE_SIGMA_PX_BY_CLASS: dict[int, float] = {CONTAINER_CLASS_ID: 8.0}
#: Residuals beyond this many sigmas are down-weighted (Huber, by IRLS).
REFINE_HUBER_SIGMAS = 2.0
#: Levenberg-Marquardt iterations of each IRLS sweep of the multi-frame refinement.
#: Measured by ``sorterbot-cloud bench oracle --n 40 --seed-start 500`` (oracle boxes, 39 sessions):
#: (10, 6, 5) gave position p95 6.72 mm at 73.5 ms trigger core, (8, 4) 6.77 mm at 58.6 ms;
#: on rendered sessions with the simulator's boxes (``sorterbot-cloud evaluate-sessions
#: --detector ground-truth``, 20 held-out sessions) p95 5.7 mm -> 7.9 mm ((10, 4): 6.9 mm),
#: the price of a full trigger route under 100 ms (``bench trigger``: 123 -> 98 ms).
#: (6, 4) was faster still but left noise-free frustums 4 mm off (tests/unit/test_geometry.py).
#: With REFINE_SIGMA_PX 4 (smaller residuals in sigmas, slower to converge) (8, 4) left them
#: 3.3 mm off, (10, 6) 0.5 mm.
REFINE_SCHEDULE = (10, 6)
#: Resting-pose prior of items (log-sigma): an item at rest on a table lies on a wide face,
#: so a fit taller than its footprint is penalised by ``max(0, log(height / size)) /
#: REST_LOG_SIGMA`` (a sigma per 35 % too tall; a cork standing on end, 30 mm high on a
#: 25 mm footprint, costs 0.6 sigma). A long item pointing at the camera gives boxes that a
#: thin column explains as well; the column's small size then splits its kind. On 160
#: tuning sessions replayed offline it fixed one such split (a battery fitted 16 mm wide and
#: 39 mm tall, 52 x 10 mm with the prior) and changed no other outcome (0.15..0.3 alike).
REST_LOG_SIGMA = 0.3
#: Per-parameter penalty (in squared sigmas) when choosing between shape models.
REFINE_PARAM_PENALTY = 2.0
#: A fit whose robust cost per box side used exceeds this (squared sigmas) is rejected:
#: no model explains the boxes. On oracle sessions good fits stay below 3, failed ones
#: above 10. The detector's container boxes are noisier (side errors of 10-20 px): with
#: the old bar of 4, 95 of 97 containers of 40 rendered sessions fell back to single-frame
#: averages; with 10, fits with cost 4..10 per side are kept (median container error
#: 14.5 -> 12.8 mm, calibrated p95 over all objects 28.6 -> 26.1 mm), and the simulator's
#: boxes give the same figures as with 4 (evaluate-sessions --detector ground-truth).
#: Those figures were at REFINE_SIGMA_PX 2; at 4 px the bar stays 10 squared sigmas (on
#: 40 + 40 tuning sessions replayed with an earlier detector's boxes, p95 18.1 / 20.6 mm at 5,
#: 17.1 / 17.1 at 10, 17.1 / 18.7 at 20).
REFINE_MAX_MEAN_COST = 10.0
#: Starting yaws (degrees) of the cuboid model (a rectangle repeats every 90 degrees
#: once its sides may swap).
_CUBOID_START_YAWS_DEG = (0.0, 45.0)
#: Levenberg-Marquardt iterations after which only the best of a model's starting points
#: (:data:`_CUBOID_START_YAWS_DEG`) goes on; the first sweep of :data:`REFINE_SCHEDULE`
#: then continues from it alone (10 would run every start through the whole first
#: sweep). On the 160 tuning sessions (seeds 3000.. and 9000.., the trigger replayed on
#: their stored detections, both modes) 4 changed no session's counts or sorting, left
#: pooled position p95 at 13.74 mm and moved 11 of 1295 objects by more than 0.5 mm
#: (one container 9.6 mm); 3 gave p95 13.87 mm. It saves about 5 ms of the 20-frame
#: trigger (``sorterbot-cloud bench trigger``).
REFINE_START_ITERATIONS = 4
#: Heights (shares of the fitted height) of the rings that sample the rounded-bowl model's
#: wall (:func:`_bowl_boxes`): ``1 - cos(phi)`` for 9 equally spaced ellipse angles ``phi``
#: in [0, 90] degrees, dense near the base where the wall turns fastest. Boxes come within
#: 1.5 px of the smooth wall's for a bowl 200 mm from the camera (tests/unit/test_geometry.py;
#: the detector's container sides are off by 3-9 px). 17 rings came within 0.5 px but
#: slowed the fit's convergence on clean cylinders (Levenberg-Marquardt with finite
#: differences over the rings' maximum): costs 200-370 squared sigmas after the schedule, against 1.
BOWL_RING_FRACTIONS: tuple[float, ...] = tuple(float(1 - math.cos(k * math.pi / 16)) for k in range(9))
#: The shape models that compete in the multi-frame fit (:func:`refine_objects`): any of
#: ``cuboid``, ``bowl``, ``sphere`` and ``revolved``. The three-ring solid of revolution
#: (``revolved``) is left out: its free middle ring fits the detector's box noise, and it
#: cannot follow a rounded wall between its rings (on the simulator's boxes, bowls came out
#: 9.6 mm too far and too low, median; 1.1 mm with the rounded-bowl model, which is also a
#: cylinder when its radii agree). On 160 tuning sessions (the trigger replayed on their
#: stored detections) pooled position p95 was 16.11 mm with (cuboid, revolved, sphere),
#: 14.93 with the bowl model added and 13.55 with it in place of ``revolved`` (container
#: box sigma 4 px, 7 bowl rings).
REFINE_MODELS: tuple[str, ...] = ("cuboid", "bowl", "sphere")


class _FrameTerms(NamedTuple):
    """Per-frame camera terms of a batch of fits, each shaped (B, F, ...) (:func:`_frame_terms`).

    ``g_u``, ``g_v`` and ``forward`` are the linear maps of the pinhole projection: a world
    point ``X`` (mm) lands on ``u = (X . g_u - o_u) / (X . forward - o_f)`` (likewise ``v``)
    while it is in front of the camera, with ``g_u = fx right + cx forward`` and ``o_u =
    center . g_u``. They are computed once per fit so that the box functions need no
    matrix products per evaluation.
    """

    forward: np.ndarray  # (B, F, 3) optical axis
    right: np.ndarray  # (B, F, 3) image +u
    down: np.ndarray  # (B, F, 3) image +v
    center: np.ndarray  # (B, F, 3) camera centre, mm
    fx: np.ndarray  # (B, F) focal lengths and principal point scaled to each frame's size, px
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    g_u: np.ndarray  # (B, F, 3)
    g_v: np.ndarray  # (B, F, 3)
    o_u: np.ndarray  # (B, F) center . g_u
    o_v: np.ndarray  # (B, F) center . g_v
    o_f: np.ndarray  # (B, F) center . forward
    o_r: np.ndarray  # (B, F) center . right
    o_d: np.ndarray  # (B, F) center . down

    def tiled(self, k: int) -> _FrameTerms:
        """``k`` copies of the batch stacked along the first axis (for stacked evaluations)."""
        return _FrameTerms(*(np.concatenate([t] * k, axis=0) for t in self)) if k > 1 else self


def _dot3(vectors: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``vectors (..., B, 3) . g (B, F, 3)`` -> (..., B, F), written out (no matrix product)."""
    return vectors[..., None, 0] * g[..., 0] + vectors[..., None, 1] * g[..., 1] + vectors[..., None, 2] * g[..., 2]


def _frame_terms(thetas: np.ndarray, sizes: np.ndarray, camera: CameraModel) -> _FrameTerms:
    """Per-frame camera terms (:class:`_FrameTerms`) of base angles ``thetas`` (B, F), degrees,
    and frame sizes ``sizes`` (B, F, 2), pixels."""
    b, f = thetas.shape
    forward, right, down, center = (a.reshape(b, f, 3) for a in _camera_axes(camera, thetas.reshape(-1)))
    sx = sizes[:, :, 0] / camera.calib_width
    sy = sizes[:, :, 1] / camera.calib_height
    fx, fy, cx, cy = camera.fx * sx, camera.fy * sy, camera.cx * sx, camera.cy * sy
    g_u = fx[..., None] * right + cx[..., None] * forward
    g_v = fy[..., None] * down + cy[..., None] * forward
    dot = lambda a, g: (a * g).sum(-1)  # noqa: E731
    return _FrameTerms(forward, right, down, center, fx, fy, cx, cy, g_u, g_v,
                       dot(center, g_u), dot(center, g_v), dot(center, forward), dot(center, right), dot(center, down))


def _ellipse_extremes(a0, a1, a2, b0, b1, b2) -> tuple[np.ndarray, np.ndarray]:
    """Extremes over ``phi`` of ``(a0 + a1 cos phi + a2 sin phi) / (b0 + b1 cos phi + b2 sin phi)``.

    ``u' = 0`` reduces to ``A sin phi + B cos phi + C = 0`` with ``A = a0 b1 - a1 b0``,
    ``B = a2 b0 - a0 b2``, ``C = a2 b1 - a1 b2``, solved in closed form: ``phi = psi +- delta``
    with ``cos psi = B / n``, ``sin psi = A / n``, ``cos delta = -C / n``. The denominator
    (the depth) is floored at 1 mm. All arguments broadcast; returns (minimum, maximum).
    """
    big_a, big_b, big_c = a0 * b1 - a1 * b0, a2 * b0 - a0 * b2, a2 * b1 - a1 * b2
    norm = np.maximum(np.sqrt(big_a * big_a + big_b * big_b), 1e-12)  # np.hypot is about 7x slower here
    cos_psi, sin_psi = big_b / norm, big_a / norm
    cos_delta = np.clip(-big_c / norm, -1.0, 1.0)
    sin_delta = np.sqrt(1.0 - cos_delta**2)
    # cos(psi -+ delta) = cc +- ss, sin(psi +- delta) = sc +- cs: shared products of both roots
    cc, ss, sc, cs = cos_psi * cos_delta, sin_psi * sin_delta, sin_psi * cos_delta, cos_psi * sin_delta
    num0, num1 = a0 + a1 * cc + a2 * sc, a2 * cs - a1 * ss
    den0, den1 = b0 + b1 * cc + b2 * sc, b2 * cs - b1 * ss
    first = (num0 + num1) / np.maximum(den0 + den1, 1.0)
    second = (num0 - num1) / np.maximum(den0 - den1, 1.0)
    return np.minimum(first, second), np.maximum(first, second)


def _stacked_ring_boxes(xy: np.ndarray, radii: np.ndarray, z: np.ndarray, terms: _FrameTerms) -> np.ndarray:
    """Box (B, F, 4) of the union of horizontal rings stacked on one vertical axis.

    Parameters
    ----------
    xy : ndarray of shape (B, 2), mm
        Axis position of each solid.
    radii, z : ndarray of shape (R, B), mm
        Radius and height of each ring.
    terms : _FrameTerms
        From :func:`_frame_terms`.

    Returns
    -------
    ndarray of shape (B, F, 4), pixels
        The union of the rings' exact boxes (:func:`_ellipse_extremes`; a horizontal circle
        ``centre + r (cos phi, sin phi, 0)`` projects to a ratio affine in ``cos phi, sin phi``
        with coefficients from the linear maps of :class:`_FrameTerms`): the box of the
        solid whose profile joins consecutive rings by frustums (a frustum's silhouette is
        spanned by its two end rings).
    """
    t = terms
    x, y = xy[:, 0, None], xy[:, 1, None]  # (B, 1)
    zr, r = z[..., None], radii[..., None]  # (R, B, 1)
    b0 = (x * t.forward[..., 0] + y * t.forward[..., 1] - t.o_f) + zr * t.forward[..., 2]  # (R, B, F)
    b1, b2 = r * t.forward[..., 0], r * t.forward[..., 1]
    lo, hi = [], []
    for g, o in ((t.g_u, t.o_u), (t.g_v, t.o_v)):
        a0 = (x * g[..., 0] + y * g[..., 1] - o) + zr * g[..., 2]
        low, high = _ellipse_extremes(a0, r * g[..., 0], r * g[..., 1], b0, b1, b2)
        lo.append(low.min(0))
        hi.append(high.max(0))
    return np.stack([lo[0], lo[1], hi[0], hi[1]], axis=-1)


def _revolved_boxes(p: np.ndarray, terms: _FrameTerms) -> np.ndarray:
    """Boxes (B, F, 4) of solids of revolution ``x, y, r_bottom, r_middle, r_top, h``.

    The profile is piecewise linear through three rings (z = 0, h/2, h)
    (:func:`_stacked_ring_boxes`).
    """
    z = np.array([0.0, 0.5, 1.0])[:, None] * p[None, :, 5]
    return _stacked_ring_boxes(p[:, :2], np.abs(p[:, 2:5]).T, z, terms)


def _bowl_boxes(p: np.ndarray, terms: _FrameTerms) -> np.ndarray:
    """Boxes (B, F, 4) of rounded bowls ``x, y, r_base, r_rim, h``.

    The wall's profile is a quarter ellipse from the flat base (radius ``r_base`` at z = 0)
    out to the rim (``r_rim`` at z = h, where the wall is vertical):
    ``r(z) = r_base + (r_rim - r_base) sqrt(s (2 - s))``, ``s = z / h``. Sampled as rings at
    :data:`BOWL_RING_FRACTIONS` of ``h`` and joined by frustums (:func:`_stacked_ring_boxes`).
    """
    s = np.asarray(BOWL_RING_FRACTIONS, float)[:, None]  # (R, 1)
    r_base, r_rim = np.abs(p[:, 2]), np.abs(p[:, 3])
    radii = r_base[None] + (r_rim - r_base)[None] * np.sqrt(s * (2 - s))  # (R, B)
    return _stacked_ring_boxes(p[:, :2], radii, s * p[None, :, 4], terms)


def _sphere_boxes(p: np.ndarray, terms: _FrameTerms) -> np.ndarray:
    """Exact boxes (B, F, 4) of spheres ``x, y, R`` resting on the table.

    The planes through the camera centre tangent to a sphere of radius ``r`` centred at
    camera coordinates ``(X, Y, Z)`` have ``u' = x / z`` solving
    ``u'^2 (Z^2 - r^2) - 2 X Z u' + X^2 - r^2 = 0`` (likewise ``v'`` with ``Y``).
    """
    t = terms
    r = np.abs(p[:, 2])
    centre = np.stack([p[:, 0], p[:, 1], r], axis=1)  # (B, 3)
    zc = _dot3(centre, t.forward) - t.o_f  # (B, F) camera coordinates of the centre
    r2 = (r**2)[:, None]
    denom = np.maximum(zc**2 - r2, 1e-6)
    out = []
    for axis, o, f, c in ((t.right, t.o_r, t.fx, t.cx), (t.down, t.o_d, t.fy, t.cy)):
        xc = _dot3(centre, axis) - o
        root = np.sqrt(np.maximum(r2 * (xc**2 + zc**2 - r2), 0.0))
        out.append((f * (xc * zc - root) / denom + c, f * (xc * zc + root) / denom + c))
    (u0, u1), (v0, v1) = out
    return np.stack([u0, v0, u1, v1], axis=2)


def _cuboid_boxes(p: np.ndarray, terms: _FrameTerms) -> np.ndarray:
    """Boxes (B, F, 4) of upright cuboids ``x, y, L, W, yaw_rad, h``.

    The box of the 8 projected vertices (depths floored at 1 mm), written out without
    matrix products: each camera coordinate of a vertex is the footprint centre's plus
    ``+-L/2`` times the length axis's, ``+-W/2`` times the width axis's and ``0`` or ``h``
    times the vertical's (the linear maps of :class:`_FrameTerms`).
    """
    t = terms
    c, s = np.cos(p[:, 4])[:, None], np.sin(p[:, 4])[:, None]  # (B, 1)
    x, y, half_l, half_w, h = p[:, 0, None], p[:, 1, None], np.abs(p[:, 2, None]) / 2, np.abs(p[:, 3, None]) / 2, p[:, 5, None]
    signs_l = np.array([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    signs_w = np.array([-1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0])
    top = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])

    def cam(g, o):
        base = x * g[..., 0] + y * g[..., 1] - o  # (B, F)
        along = half_l * (c * g[..., 0] + s * g[..., 1])
        across = half_w * (c * g[..., 1] - s * g[..., 0])
        up = h * g[..., 2]
        return base[..., None] + along[..., None] * signs_l + across[..., None] * signs_w + up[..., None] * top

    xc, yc, zc = cam(t.right, t.o_r), cam(t.down, t.o_d), np.maximum(cam(t.forward, t.o_f), 1.0)  # (B, F, 8)
    u = t.fx[:, :, None] * xc / zc + t.cx[:, :, None]
    v = t.fy[:, :, None] * yc / zc + t.cy[:, :, None]
    return np.stack([u.min(2), v.min(2), u.max(2), v.max(2)], axis=2)


def _batched_lm(residual_fn, params: np.ndarray, steps: np.ndarray, clamp, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on a batch of independent problems.

    Parameters
    ----------
    residual_fn : callable
        ``residual_fn(params (k B, D)) -> residuals (k B, M)``: must accept ``k`` stacked
        copies of the batch (the Jacobian is evaluated in one call with ``k = D``).
    params : ndarray of shape (B, D)
        Starting points.
    steps : ndarray of shape (D,)
        Finite-difference steps.
    clamp : callable
        ``clamp(params) -> params`` keeping parameters in their domain.
    iterations : int
        At most this many; stops earlier once two iterations in a row gain nothing
        (relative cost decrease below 1e-4 on every row).

    Returns
    -------
    params : ndarray of shape (B, D)
    cost : ndarray of shape (B,)
        Sum of squared residuals at the result.
    """
    params = clamp(params.copy())
    d = params.shape[1]
    res = residual_fn(params)
    cost = (res**2).sum(1)
    lam = np.full(len(params), 1e-2)
    eye = np.eye(d)[None]
    stalled = 0
    for _ in range(iterations):
        # forward differences, all parameters in one stacked call
        shifted = np.repeat(params[None], d, axis=0) + (np.eye(d) * steps)[:, None, :]  # (D, B, D)
        jac_t = ((residual_fn(shifted.reshape(d * len(params), d)).reshape(d, *res.shape) - res) / steps[:, None, None]).transpose(1, 0, 2)  # (B, D, M)
        jtj = jac_t @ jac_t.transpose(0, 2, 1)  # batched matmul: several times faster than einsum here
        jtr = (jac_t @ res[:, :, None])[:, :, 0]
        diag = np.einsum("nii->ni", jtj)
        delta = -np.linalg.solve(jtj + lam[:, None, None] * eye * (diag[:, :, None] + 1e-6), jtr[:, :, None])[:, :, 0]
        trial = clamp(params + delta)
        res_t = residual_fn(trial)
        cost_t = (res_t**2).sum(1)
        better = cost_t < cost
        gain = np.where(better, cost - cost_t, 0.0)
        params[better] = trial[better]
        res[better] = res_t[better]
        cost[better] = cost_t[better]
        lam = np.clip(np.where(better, lam * 0.3, lam * 10.0), 1e-7, 1e7)
        stalled = stalled + 1 if np.all(gain <= 1e-4 * cost + 1e-6) else 0
        if stalled >= 2:  # no row gains any more: converged (or stuck)
            break
    return params, cost


@dataclass(frozen=True)
class ObjectShape:
    """The shape fitted to all boxes of one object (multi-frame refinement).

    Parameters
    ----------
    x_mm, y_mm : float
        Footprint centre on the table.
    size_mm : float
        Largest horizontal extent of the fitted shape (footprint diameter).
    height_mm : float
    model : {'cuboid', 'bowl', 'sphere', 'revolved'}
    cost : float
        Robust sum of squared box residuals, in squared box sigmas (:data:`REFINE_SIGMA_PX`, :data:`REFINE_SIGMA_PX_BY_CLASS`).
    """

    x_mm: float
    y_mm: float
    size_mm: float
    height_mm: float
    model: str
    cost: float


def rest_residual(size_mm: np.ndarray, height_mm: np.ndarray) -> np.ndarray:
    """Residual (in sigmas) of the resting-pose prior: ``max(0, log(height / size)) / REST_LOG_SIGMA``.

    Parameters
    ----------
    size_mm, height_mm : ndarray of shape (N,), float
        Footprint diameter and height of fitted shapes (mm).

    Returns
    -------
    ndarray of shape (N,), float64
        0 where the shape is no taller than wide, or where :data:`REST_LOG_SIGMA` is 0 (off).
    """
    size_mm, height_mm = np.asarray(size_mm, np.float64), np.asarray(height_mm, np.float64)
    if REST_LOG_SIGMA <= 0:
        return np.zeros(np.broadcast(size_mm, height_mm).shape)
    tall = np.log(np.maximum(height_mm, 1e-3) / np.maximum(size_mm, 1e-3))
    return np.maximum(tall, 0.0) / REST_LOG_SIGMA


def refine_objects(groups: list[list[LocatedDetection]], constants: ArmConstants) -> list[ObjectShape | None]:
    """Fit one 3D shape per object to all its boxes across frames (calibrated mode).

    A single box cannot tell an object's height from its depth (module docstring), but
    the boxes of one object on several frames can: the arm's rotation moves the camera
    on a circle around the base and the object across the image, and only the true
    shape projects to all the boxes. The shape models of :data:`REFINE_MODELS` are fitted
    to every object's boxes jointly (batched Levenberg-Marquardt, Huber-weighted by IRLS,
    sides cut by the image border left out, box noise :data:`REFINE_SIGMA_PX` or the
    class's :data:`REFINE_SIGMA_PX_BY_CLASS`): by default an upright cuboid with yaw
    (boxes, trays, dice), a rounded bowl (:func:`_bowl_boxes`: bowls, and tins, coins and
    caps as cylinders) and a sphere resting on the table; optionally a solid of revolution
    with a piecewise-linear profile through three rings (``revolved``). The model with the
    least cost plus :data:`REFINE_PARAM_PENALTY` per parameter wins. Starting points come
    from the single-frame fits (:func:`fit_prisms`). Weak priors join the box residuals:
    size and height (:data:`FIT_PRIORS`) and, for items, the resting pose (:func:`rest_residual`).

    Parameters
    ----------
    groups : list of list of LocatedDetection
        The detections of each object (one class per group, one detection per frame).
    constants : ArmConstants
        Calibrated constants (``camera`` set).

    Returns
    -------
    list of ObjectShape or None
        One per group; None where the group has fewer than 12 box sides not cut by the
        border (2 per parameter), where the best fit's cost per side exceeds
        :data:`REFINE_MAX_MEAN_COST` (no model explains the boxes), or in legacy mode.

    Raises
    ------
    ValueError
        If :data:`REFINE_MODELS` names no known model.
    """
    camera = constants.camera
    out: list[ObjectShape | None] = [None] * len(groups)
    if camera is None:
        return out
    usable = []
    for g, dets in enumerate(groups):
        boxes = np.array([np.asarray(d.detection.box_xyxy, float).reshape(4) for d in dets])
        sizes = np.array([(d.detection.width_px, d.detection.height_px) for d in dets], float)
        if (~_truncation(boxes, sizes)).sum() >= 12:
            usable.append(g)
    if not usable:
        return out
    f_max = max(len(groups[g]) for g in usable)
    b = len(usable)
    boxes = np.zeros((b, f_max, 4))
    sizes = np.ones((b, f_max, 2)) * [camera.calib_width, camera.calib_height]
    thetas = np.zeros((b, f_max))
    mask = np.zeros((b, f_max, 4))
    start = np.zeros((b, 4))  # x, y, width, height from the single-frame fits
    class_ids = np.zeros(b, int)
    for k, g in enumerate(usable):
        dets = groups[g]
        n = len(dets)
        boxes[k, :n] = [np.asarray(d.detection.box_xyxy, float).reshape(4) for d in dets]
        sizes[k, :n] = [(d.detection.width_px, d.detection.height_px) for d in dets]
        thetas[k, :n] = [constants.theta_of_pw(float(d.detection.frame_pw0)) for d in dets]
        mask[k, :n] = ~_truncation(boxes[k, :n], sizes[k, :n])
        w = np.array([max(d.weight, 1e-6) for d in dets])
        whole = [d for d in dets if not d.truncated] or dets
        start[k] = (
            np.average([d.x_mm for d in dets], weights=w),
            np.average([d.y_mm for d in dets], weights=w),
            float(np.median([d.size_mm for d in whole])),
            float(np.median([d.height_mm for d in whole])),
        )
        class_ids[k] = dets[0].class_id
    h_max = camera.height_mm * 0.8

    priors = np.array([FIT_PRIORS[int(c)] for c in class_ids])  # (b, 5)

    sigma_px = np.array([REFINE_SIGMA_PX_BY_CLASS.get(int(c), REFINE_SIGMA_PX) for c in class_ids], float)  # (b,)

    def make_residuals(boxes_fn, size_of, height_of, rep: int):
        """Residuals of ``rep`` starts per object; boxes are computed only on the frames
        with a side to fit (the padding of shorter objects and wholly cut boxes skipped)."""
        bx = np.repeat(boxes, rep, axis=0)  # (B, F, 4)
        mk = np.repeat(mask, rep, axis=0)
        pr = np.repeat(priors, rep, axis=0)
        is_item = np.repeat(class_ids == ITEM_CLASS_ID, rep)
        n_obj, n_frames = bx.shape[:2]
        rows = np.flatnonzero(mk.any(axis=2))  # flat (object, frame) indices with a side to fit
        rows_obj = rows // n_frames
        row_terms = _frame_terms(
            np.repeat(thetas, rep, axis=0).reshape(-1)[rows][:, None], np.repeat(sizes, rep, axis=0).reshape(-1, 2)[rows][:, None], camera
        )
        target = bx.reshape(-1, 4)[rows]
        row_sigma = np.repeat(sigma_px, rep)[rows_obj][:, None]  # (R, 1)
        row_mask = mk.reshape(-1, 4)[rows] / row_sigma
        weights = np.ones_like(row_mask)
        tiled: dict[int, tuple] = {}

        def tiles(k):
            """Row terms, indices and priors of ``k`` stacked copies of the batch (built once per ``k``)."""
            if k not in tiled:
                offsets = np.arange(k)[:, None]
                tiled[k] = (row_terms.tiled(k), (rows_obj[None] + offsets * n_obj).reshape(-1),
                            (rows[None] + offsets * (n_obj * n_frames)).reshape(-1),
                            np.concatenate([pr] * k, axis=0), np.concatenate([is_item] * k))
            return tiled[k]

        def row_boxes(p, k):
            terms_k, obj_k = tiles(k)[:2]
            return boxes_fn(p[obj_k], terms_k)[:, 0]  # (k R, 4)

        def residual_fn(p):
            k = len(p) // n_obj
            _, _, scatter_k, prk, is_item_k = tiles(k)
            r_rows = (row_boxes(p, k).reshape(k, *target.shape) - target) * (row_mask * np.sqrt(weights))
            full = np.zeros((k * n_obj * n_frames, 4))
            full[scatter_k] = r_rows.reshape(-1, 4)
            size, height = size_of(p), height_of(p)
            r_size = np.log(np.maximum(size, 1.0) / prk[:, 0]) / prk[:, 1]
            r_height = (height - prk[:, 2]) / prk[:, 3]
            r_rest = np.where(is_item_k, rest_residual(size, height), 0.0)
            return np.concatenate([full.reshape(len(p), -1), r_size[:, None], r_height[:, None], r_rest[:, None]], axis=1)

        def reweight(p):
            r = np.abs(row_boxes(p, 1) - target) / row_sigma
            weights[:] = np.minimum(1.0, REFINE_HUBER_SIGMAS / np.maximum(r, 1e-9))

        return residual_fn, reweight

    def run(boxes_fn, size_of, height_of, p0, steps, clamp, rep):
        """IRLS sweeps of LM; with ``rep`` starts per object, the best start after
        :data:`REFINE_START_ITERATIONS` goes on alone."""
        residual_fn, reweight = make_residuals(boxes_fn, size_of, height_of, rep)
        first = min(REFINE_START_ITERATIONS, REFINE_SCHEDULE[0]) if rep > 1 else REFINE_SCHEDULE[0]
        p, cost = _batched_lm(residual_fn, p0, steps, clamp, first)
        if rep > 1:
            best = np.argmin(cost.reshape(b, rep), axis=1)
            p = p.reshape(b, rep, -1)[np.arange(b), best]
            residual_fn, reweight = make_residuals(boxes_fn, size_of, height_of, 1)
            if REFINE_SCHEDULE[0] > first:  # the first sweep goes on from the best start alone
                p, cost = _batched_lm(residual_fn, p, steps, clamp, REFINE_SCHEDULE[0] - first)
        for iterations in REFINE_SCHEDULE[1:]:
            reweight(p)
            p, cost = _batched_lm(residual_fn, p, steps, clamp, iterations)
        return p, cost

    def clamp_cuboid(p):
        p[:, 2] = np.maximum(np.abs(p[:, 2]), 1.0)
        p[:, 3] = np.maximum(np.abs(p[:, 3]), 1.0)
        p[:, 5] = np.clip(p[:, 5], 0.5, h_max)
        return p

    def clamp_rev(p):
        p[:, 2:5] = np.maximum(np.abs(p[:, 2:5]), 0.5)
        p[:, 5] = np.clip(p[:, 5], 0.5, h_max)
        return p

    def clamp_bowl(p):
        p[:, 2:4] = np.maximum(np.abs(p[:, 2:4]), 0.5)
        p[:, 4] = np.clip(p[:, 4], 0.5, h_max)
        return p

    def clamp_sphere(p):
        p[:, 2] = np.clip(np.abs(p[:, 2]), 0.5, h_max / 2)
        return p

    n_yaw = len(_CUBOID_START_YAWS_DEG)
    a0 = np.maximum(start[:, 2], 2.0)
    h0 = np.clip(start[:, 3], 1.0, h_max)

    def cuboid_start():
        per_yaw = [np.stack([start[:, 0], start[:, 1], 0.8 * a0, 0.6 * a0, np.full(b, math.radians(y)), h0], axis=1) for y in _CUBOID_START_YAWS_DEG]
        return np.stack(per_yaw, axis=1).reshape(b * n_yaw, 6)

    # model -> (starting points, boxes, size, height, LM steps, clamp, starts per object)
    specs = {
        "cuboid": (cuboid_start, _cuboid_boxes, lambda p: np.hypot(p[:, 2], p[:, 3]), lambda p: p[:, 5],
                   np.array([0.2, 0.2, 0.2, 0.2, 0.005, 0.2]), clamp_cuboid, n_yaw),
        "revolved": (lambda: np.stack([start[:, 0], start[:, 1], a0 / 2, a0 / 2, a0 / 2, h0], axis=1), _revolved_boxes,
                     lambda p: 2 * np.abs(p[:, 2:5]).max(1), lambda p: p[:, 5], np.full(6, 0.2), clamp_rev, 1),
        "sphere": (lambda: np.stack([start[:, 0], start[:, 1], a0 / 2], axis=1), _sphere_boxes,
                   lambda p: 2 * np.abs(p[:, 2]), lambda p: 2 * np.abs(p[:, 2]), np.full(3, 0.2), clamp_sphere, 1),
        "bowl": (lambda: np.stack([start[:, 0], start[:, 1], a0 / 4, a0 / 2, h0], axis=1), _bowl_boxes,
                 lambda p: 2 * np.abs(p[:, 2:4]).max(1), lambda p: p[:, 4], np.full(5, 0.2), clamp_bowl, 1),
    }
    models = [m for m in specs if m in REFINE_MODELS]
    if not models:
        raise ValueError(f"REFINE_MODELS names no known shape model: {REFINE_MODELS!r} (known: {sorted(specs)})")
    fits = {}
    for m in models:
        start_fn, boxes_fn, size_of, height_of, steps, clamp, rep = specs[m]
        params, cost = run(boxes_fn, size_of, height_of, start_fn(), steps, clamp, rep)
        fits[m] = (params, cost, size_of(params), height_of(params))
    scores = np.stack([fits[m][1] + fits[m][0].shape[1] * REFINE_PARAM_PENALTY for m in models], axis=1)
    choice = np.argmin(scores, axis=1)
    for k, g in enumerate(usable):
        m = models[choice[k]]
        params, cost, size, height = fits[m]
        shape = ObjectShape(float(params[k, 0]), float(params[k, 1]), float(size[k]), float(height[k]), m, float(cost[k]))
        mean_cost = shape.cost / max(mask[k].sum(), 1.0)
        if all(math.isfinite(v) for v in (shape.x_mm, shape.y_mm, shape.size_mm)) and mean_cost <= REFINE_MAX_MEAN_COST:
            out[g] = shape
    return out
