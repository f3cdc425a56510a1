"""The original SorterBot formulas (the constants carry no ``camera`` block).

With ``a = |W/2 - x|``, ``b = H/2 - y`` (box centre ``(x, y)``), ``R = arm_radius``
(pixels), ``gamma = atan(a / (b + R))`` and ``d = sqrt(a^2 + (b + R)^2)``:
``pw0 = p0 + s * rotation_range_as_pw * gamma_deg / rotation_range_as_deg`` with
``s = -1`` when ``x > W/2`` else ``+1``, and
``pw1 = dist_min_as_pw + (dist_max_as_pw - dist_min_as_pw) * (d - (R - H/2)) / H``.
``pw0``/``pw1`` are exactly these values. For deduplication and planning each legacy
detection also gets a planar position in *legacy pixel units* (not millimetres): the
absolute angle ``theta_deg = theta_frame + k * gamma_deg`` (``theta_frame`` the
frame's angle ``ArmConstants.theta_of_pw(p0)``, ``k`` a per-session scale that keeps
objects still from frame to frame, see :func:`legacy_angle_scale`; ``k = 1`` gives
``theta_of_pw(pw0)``) and the distance ``r_mm = d`` give ``x_mm = d cos theta``,
``y_mm = d sin theta``; ``size_mm`` is the larger side of the box in pixels. These are
consistent within one session, which is all dedup and the planner need; the ``_mm``
suffix keeps one schema for both modes.
"""

from __future__ import annotations

import math

import numpy as np

from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.geometry.located import TRUNCATED_WEIGHT_FACTOR, LocatedDetection, truncation


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


#: Candidate scales of the legacy angle for the planar dedup position (see :func:`legacy_angle_scale`).
LEGACY_ANGLE_SCALES = tuple(np.round(np.arange(0.5, 2.001, 0.05), 2))


def legacy_angle_scale(frame_theta_deg, gamma_deg, d_px, size_px, class_ids, pws) -> float:
    """Scale ``k`` of the legacy angle that keeps objects still from frame to frame.

    The legacy model's angle ``gamma`` of an object off the frame's centre line is only
    proportional to the true one (its ``arm_radius`` is a rough stand-in for the camera's
    focal length and mounting), so ``theta_frame + gamma`` drifts as an object crosses the
    image, by up to several object sizes over a sweep. For deduplication only, the planar
    position uses ``theta_frame + k * gamma`` with the ``k`` (from
    :data:`LEGACY_ANGLE_SCALES`) that minimises the median size-normalised distance
    from each detection to the nearest detection of the same class on the next frame.
    ``k = 1`` when fewer than two frames hold detections.

    Parameters
    ----------
    frame_theta_deg : ndarray of shape (N,), float, degrees
        Angle of each detection's frame (``theta_frame``).
    gamma_deg : ndarray of shape (N,), float, degrees
        Signed legacy angle off the frame's centre line (:func:`legacy_pulse_widths`).
    d_px : ndarray of shape (N,), float, pixels
        Legacy distance from the assumed arm axis.
    size_px : ndarray of shape (N,), float, pixels
        Larger box side (> 0): the distances are divided by it.
    class_ids : ndarray of shape (N,), int
        Only detections of the same class are paired.
    pws : ndarray of shape (N,), float, µs
        Base pulse width of each detection's frame: detections with equal values share a frame.

    Returns
    -------
    float
        The chosen scale, one of :data:`LEGACY_ANGLE_SCALES` (ties go to the one nearest 1), or 1.0.
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


def locate_legacy(detections, boxes, sizes, constants: ArmConstants) -> list[LocatedDetection]:
    """Place detections with the original SorterBot formulas (module docstring).

    Parameters
    ----------
    detections : list of StoredDetection
        N >= 1 detections of one session.
    boxes : ndarray of shape (N, 4), float64, pixels
        Their ``box_xyxy``, already checked (finite, ``x0 <= x1``, ``y0 <= y1``).
    sizes : ndarray of shape (N, 2), float64, pixels
        Their frames' ``(W, H)``, positive.
    constants : ArmConstants
        Legacy constants (``camera`` is not used).

    Returns
    -------
    list of LocatedDetection
        One per detection, in input order; positions in legacy pixel units.
    """
    truncated = truncation(boxes, sizes).any(axis=1)
    n = len(detections)
    pw0s, pw1s, gammas, ds = (np.zeros(n) for _ in range(4))
    for i, d in enumerate(detections):
        pw0s[i], pw1s[i], gammas[i], ds[i] = legacy_pulse_widths(boxes[i], int(sizes[i, 0]), int(sizes[i, 1]), float(d.frame_pw0), constants)
    frame_pws = np.array([float(d.frame_pw0) for d in detections])
    frame_theta = (frame_pws - constants.zero_pw) * constants.rotation_range_as_deg / constants.rotation_range_as_pw
    size_px = np.maximum(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), 1.0)
    class_ids = np.array([int(d.class_id) for d in detections])
    scale = legacy_angle_scale(frame_theta, gammas, ds, size_px, class_ids, frame_pws)
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
