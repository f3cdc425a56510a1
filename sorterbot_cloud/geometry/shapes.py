"""Projected image boxes of the shape models, from per-frame camera terms.

:func:`frame_terms` computes the linear maps of the pinhole projection of each frame once
per fit (:class:`FrameTerms`); the box functions evaluate the boxes of upright elliptic
prisms (:func:`prism_boxes`, the single-frame fit), cuboids with yaw
(:func:`cuboid_boxes`), rounded bowls (:func:`bowl_boxes`), spheres resting on the table
(:func:`sphere_boxes`) and solids of revolution through three rings
(:func:`revolved_boxes`) without matrix products per evaluation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from sorterbot_cloud.camera import CameraModel

#: Heights (shares of the fitted height) of the rings that sample the rounded-bowl model's
#: wall (:func:`bowl_boxes`): ``1 - cos(phi)`` for 9 equally spaced ellipse angles ``phi``
#: in [0, 90] degrees, dense near the base where the wall turns fastest. Boxes come within
#: 1.5 px of the smooth wall's for a bowl 200 mm from the camera (tests/unit/test_geometry.py;
#: the detector's container sides are off by 3-9 px). 17 rings came within 0.5 px but
#: slowed the fit's convergence on clean cylinders (Levenberg-Marquardt with finite
#: differences over the rings' maximum): costs 200-370 squared sigmas after the schedule, against 1.
BOWL_RING_FRACTIONS: tuple[float, ...] = tuple(float(1 - math.cos(k * math.pi / 16)) for k in range(9))


class FrameTerms(NamedTuple):
    """Per-frame camera terms of a batch of fits, each shaped (B, F, ...) (:func:`frame_terms`).

    ``g_u``, ``g_v`` and ``forward`` are the linear maps of the pinhole projection: a world
    point ``X`` (mm) lands on ``u = (X . g_u - o_u) / (X . forward - o_f)`` (likewise ``v``)
    while it is in front of the camera, with ``g_u = fx right + cx forward`` and ``o_u =
    center . g_u``. They are computed once per fit so that the box functions need no
    matrix products per evaluation.
    """

    forward: np.ndarray  #: (B, F, 3) optical axis
    right: np.ndarray  #: (B, F, 3) image +u
    down: np.ndarray  #: (B, F, 3) image +v
    center: np.ndarray  #: (B, F, 3) camera centre, mm
    fx: np.ndarray  #: (B, F) focal lengths and principal point scaled to each frame's size, px
    fy: np.ndarray  #: (B, F) as ``fx``
    cx: np.ndarray  #: (B, F) as ``fx``
    cy: np.ndarray  #: (B, F) as ``fx``
    g_u: np.ndarray  #: (B, F, 3)
    g_v: np.ndarray  #: (B, F, 3)
    o_u: np.ndarray  #: (B, F) center . g_u
    o_v: np.ndarray  #: (B, F) center . g_v
    o_f: np.ndarray  #: (B, F) center . forward
    o_r: np.ndarray  #: (B, F) center . right
    o_d: np.ndarray  #: (B, F) center . down

    def tiled(self, k: int) -> FrameTerms:
        """``k`` copies of the batch stacked along the first axis (for stacked evaluations)."""
        return FrameTerms(*(np.concatenate([t] * k, axis=0) for t in self)) if k > 1 else self


def camera_axes(camera: CameraModel, thetas: np.ndarray):
    """Per-frame forward, right, down axes (N, 3) and camera centres (N, 3).

    Parameters
    ----------
    camera : CameraModel
        Uses its pitch, offset from the base axis and height.
    thetas : ndarray of shape (N,), float, degrees
        Base angle of each frame.

    Returns
    -------
    forward, right, down : ndarray of shape (N, 3), float64
        Unit optical axis, image +u and image +v directions in the world frame.
    center : ndarray of shape (N, 3), float64, mm
        Camera centre of each frame.
    """
    t = np.radians(thetas)
    p = math.radians(camera.pitch_deg)
    forward = np.stack([np.cos(t) * math.cos(p), np.sin(t) * math.cos(p), np.full_like(t, -math.sin(p))], axis=1)
    right = np.stack([np.sin(t), -np.cos(t), np.zeros_like(t)], axis=1)
    down = np.cross(forward, right)
    center = np.stack([camera.offset_mm * np.cos(t), camera.offset_mm * np.sin(t), np.full_like(t, camera.height_mm)], axis=1)
    return forward, right, down, center


def _dot3(vectors: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``vectors (..., B, 3) . g (B, F, 3)`` -> (..., B, F), written out (no matrix product)."""
    return vectors[..., None, 0] * g[..., 0] + vectors[..., None, 1] * g[..., 1] + vectors[..., None, 2] * g[..., 2]


def frame_terms(thetas: np.ndarray, sizes: np.ndarray, camera: CameraModel) -> FrameTerms:
    """Per-frame camera terms (:class:`FrameTerms`) of base angles ``thetas`` (B, F), degrees,
    and frame sizes ``sizes`` (B, F, 2), pixels.

    Parameters
    ----------
    thetas : ndarray of shape (B, F), float, degrees
        Base angle of each frame of each fit in the batch.
    sizes : ndarray of shape (B, F, 2), float, pixels
        Frame ``(W, H)``; the camera's intrinsics are scaled from its calibration size.
    camera : CameraModel

    Returns
    -------
    FrameTerms
        Every field shaped (B, F, 3) or (B, F), float64.
    """
    b, f = thetas.shape
    forward, right, down, center = (a.reshape(b, f, 3) for a in camera_axes(camera, thetas.reshape(-1)))
    sx = sizes[:, :, 0] / camera.calib_width
    sy = sizes[:, :, 1] / camera.calib_height
    fx, fy, cx, cy = camera.fx * sx, camera.fy * sy, camera.cx * sx, camera.cy * sy
    g_u = fx[..., None] * right + cx[..., None] * forward
    g_v = fy[..., None] * down + cy[..., None] * forward
    dot = lambda a, g: (a * g).sum(-1)  # noqa: E731
    return FrameTerms(forward, right, down, center, fx, fy, cx, cy, g_u, g_v,
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
    terms = frame_terms(np.asarray(thetas, float).reshape(-1, 1), np.asarray(sizes, float).reshape(-1, 1, 2), camera)
    return prism_boxes_from_terms(params, terms, camera.height_mm * 0.8)


def prism_boxes_from_terms(params: np.ndarray, terms: FrameTerms, max_height_mm: float) -> np.ndarray:
    """:func:`prism_boxes` on precomputed single-frame terms (N, 1, ...); heights clipped to
    ``[0, max_height_mm]``.

    Parameters
    ----------
    params : ndarray of shape (N, 5), float, mm
        ``x_mm, y_mm, a_mm, b_mm, h_mm`` as for :func:`prism_boxes`.
    terms : FrameTerms
        Camera terms of each detection's frame, fields shaped (N, 1, ...) (:func:`frame_terms`).
    max_height_mm : float
        Heights above this are clipped to it.

    Returns
    -------
    ndarray of shape (N, 4), float64, pixels
        ``x0, y0, x1, y1``.
    """
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


def _stacked_ring_boxes(xy: np.ndarray, radii: np.ndarray, z: np.ndarray, terms: FrameTerms) -> np.ndarray:
    """Box (B, F, 4) of the union of horizontal rings stacked on one vertical axis.

    Parameters
    ----------
    xy : ndarray of shape (B, 2), mm
        Axis position of each solid.
    radii, z : ndarray of shape (R, B), mm
        Radius and height of each ring.
    terms : FrameTerms
        From :func:`frame_terms`.

    Returns
    -------
    ndarray of shape (B, F, 4), pixels
        The union of the rings' exact boxes (:func:`_ellipse_extremes`; a horizontal circle
        ``centre + r (cos phi, sin phi, 0)`` projects to a ratio affine in ``cos phi, sin phi``
        with coefficients from the linear maps of :class:`FrameTerms`): the box of the
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


def revolved_boxes(p: np.ndarray, terms: FrameTerms) -> np.ndarray:
    """Boxes (B, F, 4) of solids of revolution ``x, y, r_bottom, r_middle, r_top, h``.

    The profile is piecewise linear through three rings (z = 0, h/2, h)
    (:func:`_stacked_ring_boxes`).

    Parameters
    ----------
    p : ndarray of shape (B, 6), float, mm
        ``x, y, r_bottom, r_middle, r_top, h`` (radii taken as absolute values).
    terms : FrameTerms
        Per-frame camera terms (B, F, ...) from :func:`frame_terms`.

    Returns
    -------
    ndarray of shape (B, F, 4), float64, pixels
        ``x0, y0, x1, y1`` of each solid on each frame of ``terms``.
    """
    z = np.array([0.0, 0.5, 1.0])[:, None] * p[None, :, 5]
    return _stacked_ring_boxes(p[:, :2], np.abs(p[:, 2:5]).T, z, terms)


def bowl_boxes(p: np.ndarray, terms: FrameTerms) -> np.ndarray:
    """Boxes (B, F, 4) of rounded bowls ``x, y, r_base, r_rim, h``.

    The wall's profile is a quarter ellipse from the flat base (radius ``r_base`` at z = 0)
    out to the rim (``r_rim`` at z = h, where the wall is vertical):
    ``r(z) = r_base + (r_rim - r_base) sqrt(s (2 - s))``, ``s = z / h``. Sampled as rings at
    :data:`BOWL_RING_FRACTIONS` of ``h`` and joined by frustums (:func:`_stacked_ring_boxes`).

    Parameters
    ----------
    p : ndarray of shape (B, 5), float, mm
        ``x, y, r_base, r_rim, h`` (radii taken as absolute values).
    terms : FrameTerms
        Per-frame camera terms (B, F, ...) from :func:`frame_terms`.

    Returns
    -------
    ndarray of shape (B, F, 4), float64, pixels
        ``x0, y0, x1, y1`` of each solid on each frame of ``terms``.
    """
    s = np.asarray(BOWL_RING_FRACTIONS, float)[:, None]  # (R, 1)
    r_base, r_rim = np.abs(p[:, 2]), np.abs(p[:, 3])
    radii = r_base[None] + (r_rim - r_base)[None] * np.sqrt(s * (2 - s))  # (R, B)
    return _stacked_ring_boxes(p[:, :2], radii, s * p[None, :, 4], terms)


def sphere_boxes(p: np.ndarray, terms: FrameTerms) -> np.ndarray:
    """Exact boxes (B, F, 4) of spheres ``x, y, R`` resting on the table.

    The planes through the camera centre tangent to a sphere of radius ``r`` centred at
    camera coordinates ``(X, Y, Z)`` have ``u' = x / z`` solving
    ``u'^2 (Z^2 - r^2) - 2 X Z u' + X^2 - r^2 = 0`` (likewise ``v'`` with ``Y``).

    Parameters
    ----------
    p : ndarray of shape (B, 3), float, mm
        ``x, y, R``: footprint centre and radius (taken as absolute value; centre at z = R).
    terms : FrameTerms
        Per-frame camera terms (B, F, ...) from :func:`frame_terms`.

    Returns
    -------
    ndarray of shape (B, F, 4), float64, pixels
        ``x0, y0, x1, y1`` of each solid on each frame of ``terms``.
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


def cuboid_boxes(p: np.ndarray, terms: FrameTerms) -> np.ndarray:
    """Boxes (B, F, 4) of upright cuboids ``x, y, L, W, yaw_rad, h``.

    The box of the 8 projected vertices (depths floored at 1 mm), written out without
    matrix products: each camera coordinate of a vertex is the footprint centre's plus
    ``+-L/2`` times the length axis's, ``+-W/2`` times the width axis's and ``0`` or ``h``
    times the vertical's (the linear maps of :class:`FrameTerms`).

    Parameters
    ----------
    p : ndarray of shape (B, 6), float
        ``x, y, L, W`` (mm; sides taken as absolute values), ``yaw_rad`` (radians, of the
        length axis from +x), ``h`` (mm).
    terms : FrameTerms
        Per-frame camera terms (B, F, ...) from :func:`frame_terms`.

    Returns
    -------
    ndarray of shape (B, F, 4), float64, pixels
        ``x0, y0, x1, y1`` of each solid on each frame of ``terms``.
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
