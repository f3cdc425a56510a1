"""Small mesh-building helpers for the simulator's procedural 3D models.

Every model is built in its local frame (millimetres, footprint centre at the origin,
bottom at ``z = 0``) as one :class:`pyvista.PolyData` carrying a per-point ``"rgb"``
array (uint8, shape (N, 3)) so that one actor draws the whole object.
"""

from __future__ import annotations

import colorsys
from typing import Callable, Sequence

import numpy as np
import pyvista as pv

#: Colour function: world/local points (N, 3) mm -> RGB (N, 3) floats in [0, 1].
ColourFn = Callable[[np.ndarray], np.ndarray]


def revolve(
    profile_rz: Sequence[tuple[float, float]],
    resolution: int = 36,
    radius_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    phase_rad: float = 0.0,
) -> pv.PolyData:
    """Surface of revolution about the z axis.

    Parameters
    ----------
    profile_rz : sequence of (r_mm, z_mm)
        Profile polyline; a point with ``r_mm == 0`` becomes a pole.
    resolution : int
        Number of angular steps (6 gives a hexagonal prism).
    radius_fn : callable, optional
        ``radius_fn(phi_rad (M, K), z_mm (M, K)) -> factor (M, K)`` multiplying the
        radius (knurling, flutes).
    phase_rad : float
        Angular offset of the first vertex.

    Returns
    -------
    pyvista.PolyData
        Quad surface with ``resolution * len(profile_rz)`` points.
    """
    prof = np.asarray(profile_rz, float)
    r = np.maximum(prof[:, 0], 1e-3)
    z = prof[:, 1]
    phi = phase_rad + np.linspace(0.0, 2 * np.pi, resolution, endpoint=False)
    rr = r[:, None] * np.ones_like(phi)[None, :]
    zz = z[:, None] * np.ones_like(phi)[None, :]
    pp = np.ones_like(r)[:, None] * phi[None, :]
    if radius_fn is not None:
        rr = rr * radius_fn(pp, zz)
    points = np.stack([rr * np.cos(pp), rr * np.sin(pp), zz], axis=-1).reshape(-1, 3)
    m, k = len(r), resolution
    i, j = np.meshgrid(np.arange(m - 1), np.arange(k), indexing="ij")
    a = i * k + j
    b = i * k + (j + 1) % k
    c = (i + 1) * k + (j + 1) % k
    d = (i + 1) * k + j
    quads = np.stack([np.full(a.size, 4), a.ravel(), d.ravel(), c.ravel(), b.ravel()], axis=1)
    return pv.PolyData(points, quads.ravel())


def box(size_xyz: Sequence[float], center_xyz: Sequence[float] = (0, 0, 0), level: int = 2) -> pv.PolyData:
    """Subdivided box (quads) of ``size_xyz`` mm centred at ``center_xyz`` mm."""
    sx, sy, sz = size_xyz
    cx, cy, cz = center_xyz
    return pv.Box(bounds=(cx - sx / 2, cx + sx / 2, cy - sy / 2, cy + sy / 2, cz - sz / 2, cz + sz / 2), level=level, quads=True)


def sphere(radius_mm: float, center_xyz: Sequence[float] = (0, 0, 0), resolution: int = 24) -> pv.PolyData:
    """UV sphere."""
    return pv.Sphere(radius=radius_mm, center=center_xyz, theta_resolution=resolution, phi_resolution=resolution)


def paint(mesh: pv.PolyData, colour: Sequence[float] | ColourFn) -> pv.PolyData:
    """Attach the ``"rgb"`` point array (uint8) from a constant colour or a colour function."""
    mesh = mesh.copy()
    if callable(colour):
        rgb = np.asarray(colour(np.asarray(mesh.points)), float)
    else:
        rgb = np.broadcast_to(np.asarray(colour, float), (mesh.n_points, 3))
    mesh.point_data["rgb"] = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return mesh


def combine(parts: Sequence[pv.PolyData], feature_angle_deg: float = 40.0) -> pv.PolyData:
    """Merge painted parts into one triangle mesh with split normals for crisp edges."""
    merged = pv.merge(list(parts), merge_points=False) if len(parts) > 1 else parts[0]
    merged = merged.triangulate().clean(tolerance=0.0, point_merging=False)
    return merged.compute_normals(split_vertices=True, feature_angle=feature_angle_deg, auto_orient_normals=False, consistent_normals=False)


def hash_noise(points_mm: np.ndarray, scale_mm: float, seed: int = 0) -> np.ndarray:
    """Deterministic value noise in [0, 1] of 3D points (smooth over ``scale_mm``).

    Trilinear interpolation of a hashed integer lattice; good enough for speckle
    and mottling on small objects.
    """
    p = np.asarray(points_mm, float) / scale_mm
    base = np.floor(p).astype(np.int64)
    frac = p - base
    frac = frac * frac * (3 - 2 * frac)
    out = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                corner = base + np.array([dx, dy, dz])
                h = (corner[:, 0] * 73856093) ^ (corner[:, 1] * 19349663) ^ (corner[:, 2] * 83492791) ^ (seed * 2654435761)
                h = (h * 1103515245 + 12345) & 0x7FFFFFFF
                val = (h % 10007) / 10006.0
                w = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1]) * (frac[:, 2] if dz else 1 - frac[:, 2])
                out += w * val
    return out


def jitter_colour(rgb: Sequence[float], rng: np.random.Generator, hue: float = 0.02, sat: float = 0.08, val: float = 0.08) -> np.ndarray:
    """Small per-instance colour variation in HSV (hue shift in turns, relative s/v scale)."""
    h, s, v = colorsys.rgb_to_hsv(*np.clip(np.asarray(rgb, float), 0, 1))
    h = (h + rng.uniform(-hue, hue)) % 1.0
    s = float(np.clip(s * (1 + rng.uniform(-sat, sat)), 0, 1))
    v = float(np.clip(v * (1 + rng.uniform(-val, val)), 0, 1))
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def rotate_z(points_mm: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Rotate points (N, 3) about the z axis by ``yaw_deg`` (counter-clockwise from above)."""
    t = np.radians(yaw_deg)
    c, s = np.cos(t), np.sin(t)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return np.asarray(points_mm, float) @ rot.T
