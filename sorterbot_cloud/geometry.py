"""Pixels to arm coordinates: where on the table is the object behind a box?

Two conversions (DESIGN.md, Arm constants and geometry):

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
  cylinder (footprint diameter ``D``, height ``h``, centre ``(x, y)``) whose projected
  silhouette has the same box. The box bottom is the footprint's near edge, the box
  top the far edge of its top, the box width its widest section, so the four box sides
  pin the four unknowns; sides cut by the image border are left out and weak priors on
  ``D`` and ``h`` keep the fit determined. Boxes touching the border also get a lower
  averaging weight. ``pw0``/``pw1`` then follow from ``theta_deg`` and ``r_mm`` with
  :meth:`ArmConstants.pw0_of_theta` and :meth:`ArmConstants.pw1_of_r`.

Why a fit and not the box centre: the centre of the box back-projected to the table is
biased outwards by the object's height (its top hides ground beyond the footprint), by
up to ``h / tan(depression)`` (tens of millimetres for a 60 mm container); stepping from
the near edge by half the box width instead over-shoots by the perspective enlargement
of the (nearer) top. The cylinder fit models both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sorterbot_cloud.camera import ArmConstants, CameraModel
from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.structures import StoredDetection

#: A box side closer than this to the image border is treated as cut by it (pixels).
BORDER_MARGIN_PX = 2.0
#: Averaging weight factor of a box cut by the image border (its position is biased).
TRUNCATED_WEIGHT_FACTOR = 0.1
#: Points per ring of the cylinder model used by the calibrated fit.
_RING_POINTS = 24
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
    """Place every detection of a session on the table (DESIGN.md, geometry).

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
    """Which sides (left, top, right, bottom) touch the border: bool (N, 4)."""
    w, h = sizes[:, 0], sizes[:, 1]
    return np.stack(
        [
            boxes[:, 0] <= BORDER_MARGIN_PX,
            boxes[:, 1] <= BORDER_MARGIN_PX,
            boxes[:, 2] >= w - BORDER_MARGIN_PX,
            boxes[:, 3] >= h - BORDER_MARGIN_PX,
        ],
        axis=1,
    )


def legacy_pulse_widths(box_xyxy: np.ndarray, width_px: int, height_px: int, frame_pw0: float, constants: ArmConstants) -> tuple[float, float, float, float]:
    """The original SorterBot conversion of one box (DESIGN.md, legacy conversion).

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
    frames = np.unique(pws)
    if len(frames) < 2:
        return 1.0
    pairs = [(np.nonzero(pws == a)[0], np.nonzero(pws == b)[0]) for a, b in zip(frames[:-1], frames[1:])]
    best, best_cost = 1.0, np.inf
    for k in LEGACY_ANGLE_SCALES:
        t = np.radians(frame_theta_deg + k * gamma_deg)
        xy = np.stack([d_px * np.cos(t), d_px * np.sin(t)], axis=1)
        costs = []
        for ia, ib in pairs:
            if len(ia) == 0 or len(ib) == 0:
                continue
            dist = np.linalg.norm(xy[ia, None] - xy[None, ib], axis=2)
            dist = np.where(class_ids[ia, None] == class_ids[None, ib], dist, np.inf)
            nearest = dist.min(axis=1) / size_px[ia]
            costs.extend(nearest[np.isfinite(nearest)])
        if costs:
            cost = float(np.median(costs))
            if cost < best_cost - 1e-9 or (abs(cost - best_cost) <= 1e-9 and abs(k - 1) < abs(best - 1)):
                best, best_cost = float(k), cost
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
    1: (160.0, 0.35, 40.0, 15.0, 0.25),
}
#: Pixel noise assumed on a box side (pixels, one sigma).
BOX_SIGMA_PX = 1.0


def _ring_offsets() -> np.ndarray:
    """Unit circle points (K, 2)."""
    phi = np.linspace(0.0, 2 * np.pi, _RING_POINTS, endpoint=False)
    return np.stack([np.cos(phi), np.sin(phi)], axis=1)


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
        ``x0, y0, x1, y1`` of the projected silhouette (rims sampled at 24 points).
    """
    ring = _ring_offsets()  # (K, 2)
    n, k = len(params), len(ring)
    forward, right, down, center = _camera_axes(camera, thetas)
    view = params[:, :2] - center[:, :2]
    view /= np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-6)
    lateral = np.stack([view[:, 1], -view[:, 0]], axis=1)
    half_a = np.maximum(params[:, 2], 0.5)[:, None, None] / 2
    half_b = np.maximum(params[:, 3], 0.5)[:, None, None] / 2
    xy = params[:, None, :2] + half_a * ring[None, :, :1] * lateral[:, None] + half_b * ring[None, :, 1:] * view[:, None]
    height = np.clip(params[:, 3 + 1], 0.0, camera.height_mm * 0.8)[:, None, None]
    bottom = np.concatenate([xy, np.zeros((n, k, 1))], axis=2)
    top = np.concatenate([xy, np.broadcast_to(height, (n, k, 1))], axis=2)
    rel = np.concatenate([bottom, top], axis=1) - center[:, None, :]  # (N, 2K, 3)
    zc = np.maximum(np.einsum("nkj,nj->nk", rel, forward), 1.0)
    sx = sizes[:, 0] / camera.calib_width
    sy = sizes[:, 1] / camera.calib_height
    u = (camera.fx * sx)[:, None] * np.einsum("nkj,nj->nk", rel, right) / zc + (camera.cx * sx)[:, None]
    v = (camera.fy * sy)[:, None] * np.einsum("nkj,nj->nk", rel, down) / zc + (camera.cy * sy)[:, None]
    return np.stack([u.min(1), v.min(1), u.max(1), v.max(1)], axis=1)


def _initial_guess(boxes, sizes, thetas, camera: CameraModel, class_ids: np.ndarray) -> np.ndarray:
    """Near edge + half the ground width, depth = width, prior height: (N, 5)."""
    n = len(boxes)
    params = np.zeros((n, 5))
    for i in range(n):
        x0, _, x1, y1 = boxes[i]
        w, h = sizes[i]
        uv = np.array([[(x0 + x1) / 2, y1], [x0, y1], [x1, y1]])
        ground = camera.backproject_to_plane(uv, float(thetas[i]), int(w), int(h), 0.0)
        if not np.all(np.isfinite(ground)):
            # box bottom at or above the horizon: fall back to the frame's lowest row
            uv[:, 1] = h - 1
            ground = camera.backproject_to_plane(uv, float(thetas[i]), int(w), int(h), 0.0)
        _, center = camera.pose(float(thetas[i]))
        near = ground[0, :2]
        view = near - center[:2]
        view /= max(np.linalg.norm(view), 1e-6)
        width = max(float(np.linalg.norm(ground[1, :2] - ground[2, :2])), 2.0)
        params[i] = (*(near + view * width / 2), width, width, FIT_PRIORS[int(class_ids[i])][2])
    return params


def fit_prisms(
    boxes_xyxy: np.ndarray,
    sizes_px: np.ndarray,
    thetas_deg: np.ndarray,
    camera: CameraModel,
    class_ids: np.ndarray,
    truncated: np.ndarray | None = None,
    iterations: int = _FIT_ITERATIONS,
    return_covariance: bool = False,
):
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

    return_covariance : bool
        Also return the posterior covariance of the position.

    Returns
    -------
    params : ndarray of shape (N, 5), float64
        ``x_mm, y_mm, a_mm, b_mm, h_mm`` (see :func:`prism_boxes`).
    covariance : ndarray of shape (N, 2, 2), float64, mm^2
        Only with ``return_covariance``: Laplace approximation ``(J^T J)^-1`` of the
        posterior of ``x_mm, y_mm`` at the fit. It is long along the viewing direction
        (where the box leaves depth and height ambiguous) and short across it.
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

    def residuals(p: np.ndarray) -> np.ndarray:
        r_box = (prism_boxes(p, camera, thetas, sizes) - boxes) * mask
        a = np.maximum(p[:, 2], 0.5)
        b = np.maximum(p[:, 3], 0.5)
        r_a = np.log(a / priors[:, 0]) / priors[:, 1]
        r_h = (p[:, 4] - priors[:, 2]) / priors[:, 3]
        r_ab = np.log(b / a) / priors[:, 4]
        return np.concatenate([r_box, r_a[:, None], r_h[:, None], r_ab[:, None]], axis=1)  # (N, 7)

    steps = np.full(5, 0.25)

    def jacobian(p: np.ndarray, r: np.ndarray) -> np.ndarray:
        jac = np.empty(r.shape + (5,))
        for j in range(5):
            shifted = p.copy()
            shifted[:, j] += steps[j]
            jac[:, :, j] = (residuals(shifted) - r) / steps[j]
        return jac

    lam = np.full(len(boxes), 1e-2)
    res = residuals(params)
    cost = (res**2).sum(1)
    eye = np.eye(5)[None]
    for _ in range(iterations):
        jac = jacobian(params, res)
        jtj = np.einsum("nri,nrj->nij", jac, jac)
        jtr = np.einsum("nri,nr->ni", jac, res)
        diag = np.einsum("nii->ni", jtj)
        delta = -np.linalg.solve(jtj + lam[:, None, None] * eye * (diag[:, :, None] + 1e-6), jtr[:, :, None])[:, :, 0]
        trial = params + delta
        trial[:, 2:4] = np.maximum(trial[:, 2:4], 1.0)
        trial[:, 4] = np.clip(trial[:, 4], 0.0, camera.height_mm * 0.8)
        res_t = residuals(trial)
        cost_t = (res_t**2).sum(1)
        better = cost_t < cost
        params[better] = trial[better]
        res[better] = res_t[better]
        cost[better] = cost_t[better]
        lam = np.where(better, lam * 0.3, lam * 10.0)
    if not return_covariance:
        return params
    jac = jacobian(params, res)
    jtj = np.einsum("nri,nrj->nij", jac, jac) + eye * 1e-9
    covariance = np.linalg.inv(jtj)[:, :2, :2]
    return params, covariance


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
            )
        )
    return out
