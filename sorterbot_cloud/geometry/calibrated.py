"""Calibrated single-frame placement (a :class:`~sorterbot_cloud.camera.CameraModel` is given).

The object's ground footprint centre on ``z = 0`` is estimated from its box by fitting an
upright elliptic prism (width ``a`` across the viewing direction, depth ``b`` along it,
height ``h``, centre ``(x, y)``) whose projected silhouette has the same box
(:func:`fit_prisms`). The box bottom is the footprint's near edge, the box top the far
edge of its top, the box width its widest section; sides cut by the image border are
left out and weak priors (:data:`FIT_PRIORS`) decide what one box cannot: how its
vertical extent splits into depth and height. Boxes touching the border also get a
lower averaging weight. ``pw0``/``pw1`` follow from ``theta_deg`` and ``r_mm`` with
:meth:`ArmConstants.pw0_of_theta` and :meth:`ArmConstants.pw1_of_r`. After
deduplication, :func:`~sorterbot_cloud.geometry.refine.refine_objects` resolves the
single-box ambiguity with all boxes of an object across frames.

Why not the box centre: the centre of the box back-projected to the table is biased
outwards by the object's height (its top hides ground beyond the footprint), by up to
``h / tan(depression)`` (tens of millimetres for a 60 mm container); stepping from the
near edge by half the box width instead over-shoots by the perspective enlargement of
the (nearer) top and fails on bowls (rim wider than base). The shape fits model both.
"""

from __future__ import annotations

import math

import numpy as np

from sorterbot_cloud.camera import ArmConstants, CameraModel
from sorterbot_cloud.geometry.located import TRUNCATED_WEIGHT_FACTOR, LocatedDetection, truncation
from sorterbot_cloud.geometry.shapes import camera_axes, frame_terms, prism_boxes_from_terms
from sorterbot_cloud.geometry.solver import batched_lm

#: Gauss-Newton (Levenberg-Marquardt) iterations of the calibrated fit.
_FIT_ITERATIONS = 12

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


def _ground_points(uv: np.ndarray, thetas: np.ndarray, sizes: np.ndarray, camera: CameraModel) -> np.ndarray:
    """Back-project pixels (N, K, 2) of frames ``thetas`` (N,), ``sizes`` (N, 2) onto z = 0: (N, K, 2) mm.

    Pixels at or above the horizon are moved to the frame's lowest row first.
    """
    forward, right, down, center = camera_axes(camera, thetas)
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
    center = camera_axes(camera, thetas)[3][:, :2]
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
        ``x_mm, y_mm, a_mm, b_mm, h_mm`` (see :func:`~sorterbot_cloud.geometry.shapes.prism_boxes`).
    """
    boxes = np.asarray(boxes_xyxy, float).reshape(-1, 4)
    sizes = np.asarray(sizes_px, float).reshape(-1, 2)
    thetas = np.asarray(thetas_deg, float).reshape(-1)
    class_ids = np.asarray(class_ids, int).reshape(-1)
    if truncated is None:
        truncated = truncation(boxes, sizes)
    mask = (~np.asarray(truncated, bool)).astype(float) / BOX_SIGMA_PX  # (N, 4)
    priors = np.array([FIT_PRIORS[int(c)] for c in class_ids])  # (N, 5)
    params = _initial_guess(boxes, sizes, thetas, camera, class_ids)

    terms = frame_terms(thetas.reshape(-1, 1), sizes.reshape(-1, 1, 2), camera)  # once per fit
    tiles: dict[int, tuple] = {}

    def residuals(p: np.ndarray) -> np.ndarray:
        k = len(p) // len(boxes)  # k stacked copies of the batch (see batched_lm)
        if k not in tiles:
            tile = lambda x: np.concatenate([x] * k, axis=0) if k > 1 else x  # noqa: E731
            tiles[k] = (terms.tiled(k), tile(boxes), tile(mask), tile(priors))
        terms_k, boxes_k, mask_k, pr = tiles[k]
        r_box = (prism_boxes_from_terms(p, terms_k, camera.height_mm * 0.8) - boxes_k) * mask_k
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

    params, _ = batched_lm(residuals, params, np.full(5, 0.25), clamp, iterations)
    return params


def locate_calibrated(detections, boxes, sizes, constants: ArmConstants) -> list[LocatedDetection]:
    """Place detections by the single-frame prism fit (:func:`fit_prisms`).

    Parameters
    ----------
    detections : list of StoredDetection
        N >= 1 detections of one session.
    boxes : ndarray of shape (N, 4), float64, pixels
        Their ``box_xyxy``, already checked (finite, ``x0 <= x1``, ``y0 <= y1``).
    sizes : ndarray of shape (N, 2), float64, pixels
        Their frames' ``(W, H)``, positive.
    constants : ArmConstants
        Calibrated constants (``camera`` set).

    Returns
    -------
    list of LocatedDetection
        One per detection, in input order; positions in millimetres, pulse widths from
        :meth:`ArmConstants.pw0_of_theta` and :meth:`ArmConstants.pw1_of_r`.
    """
    camera = constants.camera
    thetas = np.array([constants.theta_of_pw(float(d.frame_pw0)) for d in detections])
    truncated = truncation(boxes, sizes)
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
