"""Catalogue of procedural item, container and distractor models.

Every type is a small 3D model with its own shape, colour and surface pattern, built
in its local frame (millimetres, footprint centre at the origin, bottom on ``z = 0``).
Instances vary a little in size and colour (``rng``), never enough to be confused with
another type.

The split of item types into :data:`TRAIN_ITEM_TYPES` and :data:`HELDOUT_ITEM_TYPES` is
fixed: held-out types are never rendered into training data, so the embedder's
generalisation to unseen objects can be measured.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyvista as pv

from sorterbot_cloud.sim.meshes import box, combine, hash_noise, jitter_colour, paint, revolve, sphere


@dataclass(frozen=True)
class ModelType:
    """One kind of object the simulator can place.

    Parameters
    ----------
    name : str
    kind : {"item", "container", "distractor"}
    build : callable
        ``build(rng) -> pyvista.PolyData`` with a ``"rgb"`` uint8 point array, local frame, mm.
    specular : float
        VTK specular coefficient (0 matte .. 1 shiny).
    specular_power : float
        VTK specular exponent.
    description : str
    """

    name: str
    kind: str
    build: Callable[[np.random.Generator], pv.PolyData]
    specular: float = 0.2
    specular_power: float = 20.0
    description: str = ""


def _s(rng: np.random.Generator, spread: float = 0.08) -> float:
    """Per-instance size factor around 1."""
    return float(rng.uniform(1 - spread, 1 + spread))


# ----------------------------------------------------------------------------- items


def _bottle_cap(rng):
    k = _s(rng)
    r, h = 15.0 * k, 12.0 * k
    col = jitter_colour((0.82, 0.08, 0.07), rng)
    prof = [(0, h), (r * 0.6, h), (r - 1.2, h), (r, h - 1.0), (r, h * 0.7), (r, h * 0.4), (r, 0.6), (r - 0.8, 0), (0, 0)]
    knurl = lambda phi, z: np.where((z > 0.3) & (z < h - 0.9), 1 + 0.025 * np.cos(60 * phi), 1.0)  # noqa: E731

    def colour(p):
        rho = np.hypot(p[:, 0], p[:, 1])
        ring = (np.abs(rho - r * 0.72) < 0.9) & (p[:, 2] > h - 0.1)
        shade = 1 - 0.18 * (0.5 + 0.5 * np.cos(60 * np.arctan2(p[:, 1], p[:, 0]))) * (p[:, 2] < h - 0.9)
        out = col[None] * shade[:, None]
        out[ring] = np.array([0.95, 0.95, 0.95])
        return out

    return combine([paint(revolve(prof, 120, knurl), colour)])


def _coin(rng):
    k = _s(rng, 0.05)
    r, h = 12.0 * k, 2.0
    col = jitter_colour((0.86, 0.66, 0.22), rng, hue=0.01)
    prof = [(0, h), (r * 0.82, h), (r * 0.86, h + 0.25), (r - 0.4, h + 0.25), (r, h), (r, 0), (0, 0)]

    def colour(p):
        rho = np.hypot(p[:, 0], p[:, 1])
        emboss = hash_noise(p * np.array([1, 1, 0]), 2.0, seed=7)
        out = col[None] * (0.8 + 0.3 * emboss[:, None] * (rho < r * 0.7)[:, None])
        return out

    return combine([paint(revolve(prof, 48), colour)])


def _cube(rng):
    a = 20.0 * _s(rng)
    col = jitter_colour((0.10, 0.30, 0.85), rng)

    def colour(p):
        edge = np.max(np.abs(p - np.array([0, 0, a / 2])), axis=1)
        inner = np.sort(np.abs(p - np.array([0, 0, a / 2])), axis=1)[:, 1]
        rim = inner > a / 2 - 1.2
        out = np.repeat(col[None], len(p), 0) * (0.9 + 0.1 * hash_noise(p, 3.0)[:, None])
        out[rim & (edge > a / 2 - 0.01)] *= 0.55
        return out

    return combine([paint(box((a, a, a), (0, 0, a / 2), level=3), colour)])


def _ball(rng):
    rad = 20.0 * _s(rng)
    col = jitter_colour((0.95, 0.45, 0.05), rng)

    def colour(p):
        q = (p - np.array([0, 0, rad])) / rad
        seam = (np.abs(q[:, 0]) < 0.05) | (np.abs(q[:, 2]) < 0.05) | (np.abs(np.hypot(q[:, 0], q[:, 2]) - 0.75) < 0.05)
        out = np.repeat(col[None], len(p), 0) * (0.92 + 0.08 * hash_noise(p, 1.0)[:, None])
        out[seam] = (0.08, 0.05, 0.03)
        return out

    return combine([paint(sphere(rad, (0, 0, rad), 48), colour)], feature_angle_deg=80)


def _hex_nut(rng):
    k = _s(rng, 0.06)
    ro, ri, h = 12.5 * k, 6.0 * k, 10.0 * k
    col = jitter_colour((0.62, 0.63, 0.66), rng, sat=0.0)
    outer = revolve([(ri, h), (ro * 0.92, h), (ro, h - 0.8), (ro, 0.8), (ro * 0.92, 0), (ri, 0)], 6, phase_rad=np.pi / 6)
    hole = revolve([(ri, 0), (ri, h)], 24)
    thread = lambda p: np.repeat(col[None] * 0.5, len(p), 0) * (0.8 + 0.4 * (np.sin(p[:, 2] * 4.0) > 0))[:, None]  # noqa: E731
    return combine([paint(outer, lambda p: col[None] * (0.85 + 0.15 * hash_noise(p, 0.7)[:, None])), paint(hole, thread)], 30)


def _toy_brick(rng):
    col = jitter_colour((0.98, 0.80, 0.05), rng)
    lx, ly, h = 31.8, 15.8, 9.6
    parts = [paint(box((lx, ly, h), (0, 0, h / 2), level=2), col)]
    for i in range(4):
        for j in range(2):
            stud = revolve([(0, h + 1.8), (2.4, h + 1.8), (2.4, h), (0, h)], 20)
            stud.points += np.array([(i - 1.5) * 8.0, (j - 0.5) * 8.0, 0.0])
            parts.append(paint(stud, col * 0.97))
    return combine(parts)


def _battery(rng):
    col_body = jitter_colour((0.07, 0.07, 0.08), rng, val=0.3)
    col_top = jitter_colour((0.78, 0.45, 0.15), rng, hue=0.01)
    length, rad = 50.0, 7.0
    prof = [(0, 0), (rad * 0.97, 0), (rad, 0.6), (rad, length - 0.6), (rad * 0.97, length), (2.6, length), (2.6, length + 1.4), (0, length + 1.4)]

    def colour(p):
        z = p[:, 2]
        out = np.repeat(col_body[None], len(p), 0)
        out[z > length * 0.68] = col_top
        out[(z > length * 0.3) & (z < length * 0.36)] = (0.85, 0.85, 0.85)
        out[z >= length - 0.01] = (0.75, 0.75, 0.78)
        return out

    cyl = paint(revolve(prof, 40), colour)
    # lay it down along x, resting on the table
    pts = np.asarray(cyl.points)
    cyl.points = np.stack([pts[:, 2] - length / 2, pts[:, 1], pts[:, 0] + rad], axis=1)
    return combine([cyl], 50)


def _wrapped_candy(rng):
    col = jitter_colour((0.95, 0.25, 0.55), rng)
    body_l, rad = 24.0 * _s(rng), 7.5

    def colour(p):
        ang = np.arctan2(p[:, 2] - rad, p[:, 1])
        stripe = np.sin(3 * ang + p[:, 0] * 0.35) > 0
        out = np.where(stripe[:, None], col[None], np.array([[0.97, 0.95, 0.92]]))
        return out * (0.9 + 0.1 * hash_noise(p, 0.8)[:, None])

    prof = [(0, -body_l / 2 - 11), (4.5, -body_l / 2 - 11), (1.4, -body_l / 2 - 1.5), (rad * 0.8, -body_l / 2), (rad, -body_l / 4),
            (rad, body_l / 4), (rad * 0.8, body_l / 2), (1.4, body_l / 2 + 1.5), (4.5, body_l / 2 + 11), (0, body_l / 2 + 11)]
    twist = lambda phi, z: 1 + 0.25 * (np.abs(z) > body_l / 2) * np.cos(8 * phi + z * 0.4)  # noqa: E731
    mesh = revolve(prof[::-1], 48, twist)
    pts = np.asarray(mesh.points)
    mesh.points = np.stack([pts[:, 2], pts[:, 1], pts[:, 0] * 0.85 + rad * 0.85], axis=1)
    return combine([paint(mesh, colour)], 60)


def _cork(rng):
    k = _s(rng, 0.06)
    r0, r1, h = 10.5 * k, 12.0 * k, 30.0 * k
    col = jitter_colour((0.76, 0.58, 0.38), rng)

    def colour(p):
        n = hash_noise(p, 0.6, seed=3)
        out = col[None] * (0.75 + 0.35 * n[:, None])
        out[n < 0.18] = col * 0.45
        return out

    prof = [(0, h), (r1 - 0.8, h), (r1, h - 0.8), (r0, 0.8), (r0 - 0.8, 0), (0, 0)]
    rows = [(0, h)] + [(r1 - 0.8, h)] + [((r1 + (r0 - r1) * t), h - 0.8 - t * (h - 1.6)) for t in np.linspace(0, 1, 18)] + prof[-2:]
    return combine([paint(revolve(rows, 48), colour)], 50)


def _button(rng):
    k = _s(rng, 0.06)
    r, h = 11.0 * k, 3.2
    col = jitter_colour((0.50, 0.16, 0.70), rng)
    prof = [(0, h - 0.9)] + [(r * t, h - 0.9) for t in (0.2, 0.35, 0.5, 0.65)] + [(r * 0.78, h), (r, h), (r, 0.4), (r - 0.4, 0), (0, 0)]
    hole_xy = np.array([[-2.2, -2.2], [2.2, -2.2], [-2.2, 2.2], [2.2, 2.2]]) * k

    def colour(p):
        d = np.min(np.linalg.norm(p[:, None, :2] - hole_xy[None], axis=2), axis=1)
        out = np.repeat(col[None], len(p), 0) * (0.9 + 0.1 * hash_noise(p, 1.5)[:, None])
        out[d < 1.0] = col * 0.15
        return out

    mesh = revolve(prof, 64).triangulate().subdivide(1, "linear")
    return combine([paint(mesh, colour)], 40)


def _die(rng):
    a = 16.0 * _s(rng, 0.05)
    col = jitter_colour((0.96, 0.96, 0.93), rng, val=0.03)
    parts = [paint(box((a, a, a), (0, 0, a / 2), level=1), col)]
    pip_r = a * 0.085
    q = a * 0.27
    layouts = {1: [(0, 0)], 2: [(-q, -q), (q, q)], 3: [(-q, -q), (0, 0), (q, q)], 4: [(-q, -q), (q, q), (-q, q), (q, -q)],
               5: [(-q, -q), (q, q), (-q, q), (q, -q), (0, 0)], 6: [(-q, -q), (q, q), (-q, q), (q, -q), (-q, 0), (q, 0)]}
    faces = {1: ((0, 0, 1), (1, 0, 0)), 6: ((0, 0, -1), (1, 0, 0)), 2: ((1, 0, 0), (0, 1, 0)), 5: ((-1, 0, 0), (0, 1, 0)),
             3: ((0, 1, 0), (1, 0, 0)), 4: ((0, -1, 0), (1, 0, 0))}
    for n, (normal, u) in faces.items():
        if normal[2] < 0:
            continue  # the face on the table is never seen, and its pips would poke through the table
        normal, u = np.array(normal, float), np.array(u, float)
        v = np.cross(normal, u)
        for du, dv in layouts[n]:
            c = np.array([0, 0, a / 2]) + normal * (a / 2 - pip_r * 0.55) + u * du + v * dv
            parts.append(paint(sphere(pip_r, c, 8), (0.05, 0.05, 0.05)))
    return combine(parts, 50)


def _washer(rng):
    k = _s(rng, 0.06)
    ro, ri, h = 15.0 * k, 6.5 * k, 2.5
    col = jitter_colour((0.70, 0.74, 0.80), rng, sat=0.1)
    prof = [(ri, h), (ro - 0.4, h), (ro, h - 0.4), (ro, 0.4), (ro - 0.4, 0), (ri, 0), (ri, h)]
    return combine([paint(revolve(prof, 64), lambda p: col[None] * (0.8 + 0.25 * hash_noise(p * np.array([1, 1, 0]), 0.5, 5)[:, None]))], 30)


def _domino(rng):
    lx, ly, h = 48.0, 24.0, 8.0
    col = jitter_colour((0.06, 0.06, 0.07), rng, val=0.3)
    parts = [paint(box((lx, ly, h), (0, 0, h / 2), level=2), col), paint(box((1.2, ly * 0.8, 0.6), (0, 0, h)), (0.95, 0.95, 0.9))]
    q = 6.0
    n_left, n_right = rng.integers(1, 7, size=2)
    layouts = {1: [(0, 0)], 2: [(-q, -q), (q, q)], 3: [(-q, -q), (0, 0), (q, q)], 4: [(-q, -q), (q, q), (-q, q), (q, -q)],
               5: [(-q, -q), (q, q), (-q, q), (q, -q), (0, 0)], 6: [(-q, -q), (q, q), (-q, q), (q, -q), (-q, 0), (q, 0)]}
    for off, n in ((-lx / 4, n_left), (lx / 4, n_right)):
        for du, dv in layouts[int(n)]:
            parts.append(paint(sphere(1.8, (off + du, dv * 0.9, h - 0.9), 10), (0.97, 0.97, 0.95)))
    return combine(parts, 50)


def _marble(rng):
    rad = 8.0 * _s(rng, 0.05)
    col = jitter_colour((0.15, 0.70, 0.80), rng)

    def colour(p):
        q = p - np.array([0, 0, rad])
        swirl = np.sin(np.arctan2(q[:, 1], q[:, 0]) * 2 + q[:, 2] * 0.6) > 0.55
        out = np.repeat(col[None], len(p), 0)
        out[swirl] = (0.98, 0.98, 1.0)
        return out

    return combine([paint(sphere(rad, (0, 0, rad), 40), colour)], 80)


def _eraser(rng):
    lx, ly, h = 40.0 * _s(rng, 0.05), 20.0, 11.0
    sleeve = jitter_colour((0.10, 0.35, 0.75), rng)
    parts = [paint(box((lx, ly, h), (0, 0, h / 2), level=2), (0.96, 0.96, 0.96)),
             paint(box((lx * 0.62, ly + 0.6, h + 0.6), (lx * 0.08, 0, (h + 0.6) / 2), level=2),
                   lambda p: np.where((np.abs(p[:, 1]) < 3.5)[:, None] & (p[:, 2] > h)[:, None], np.array([[0.95, 0.95, 0.95]]), sleeve[None]))]
    return combine(parts, 50)


# ------------------------------------------------------------------------ containers


def _open_box(rng):
    lx, ly = rng.uniform(120, 190), rng.uniform(100, 150)
    h, t = rng.uniform(35, 55), 3.0
    col = jitter_colour((0.66, 0.49, 0.30), rng)

    def colour(p):
        return col[None] * (0.85 + 0.2 * hash_noise(p, 4.0, 11)[:, None])

    parts = [box((lx, ly, t), (0, 0, t / 2), 3), box((t, ly, h), (-lx / 2 + t / 2, 0, h / 2), 3), box((t, ly, h), (lx / 2 - t / 2, 0, h / 2), 3),
             box((lx - 2 * t, t, h), (0, -ly / 2 + t / 2, h / 2), 3), box((lx - 2 * t, t, h), (0, ly / 2 - t / 2, h / 2), 3)]
    return combine([paint(p, colour) for p in parts], 40)


def _bowl(rng):
    rad, h = rng.uniform(55, 90), rng.uniform(40, 60)
    palette = [(0.92, 0.92, 0.88), (0.20, 0.40, 0.75), (0.25, 0.60, 0.35), (0.80, 0.30, 0.20)]
    col = jitter_colour(palette[rng.integers(len(palette))], rng)
    n = 10
    outer_prof = [(rad * 0.5 + (rad - rad * 0.5) * np.sin(t * np.pi / 2), h * (1 - np.cos(t * np.pi / 2))) for t in np.linspace(0, 1, n)]
    inner_prof = [(max(r - 4, 0.001), max(z, 4.0)) for r, z in outer_prof[::-1]]
    prof = [(0, 0)] + outer_prof + [(rad - 2, h + 1.0)] + inner_prof + [(0, 4.0)]

    def colour(p):
        rho = np.hypot(p[:, 0], p[:, 1])
        rim = p[:, 2] > h - 1.5
        out = np.where(rim[:, None], np.array([[0.95, 0.95, 0.95]]) if col.mean() < 0.8 else np.array([[0.3, 0.3, 0.6]]), col[None])
        return out * (0.95 + 0.05 * np.cos(rho * 0.2)[:, None])

    return combine([paint(revolve(prof, 64), colour)], 60)


def _tray(rng):
    lx, ly = rng.uniform(150, 215), rng.uniform(110, 160)
    h, t = rng.uniform(14, 22), 4.0
    palette = [(0.15, 0.15, 0.17), (0.55, 0.55, 0.58), (0.75, 0.20, 0.15), (0.20, 0.50, 0.55)]
    col = jitter_colour(palette[rng.integers(len(palette))], rng)
    parts = [box((lx, ly, 2.5), (0, 0, 1.25), 3), box((t, ly, h), (-lx / 2 + t / 2, 0, h / 2), 2), box((t, ly, h), (lx / 2 - t / 2, 0, h / 2), 2),
             box((lx - 2 * t, t, h), (0, -ly / 2 + t / 2, h / 2), 2), box((lx - 2 * t, t, h), (0, ly / 2 - t / 2, h / 2), 2)]
    return combine([paint(p, lambda q: col[None] * (0.93 + 0.07 * hash_noise(q, 6.0, 2)[:, None])) for p in parts], 40)


def _tin(rng):
    rad, h = rng.uniform(50, 75), rng.uniform(35, 55)
    col = jitter_colour((0.72, 0.73, 0.76), rng, sat=0.2)
    prof = [(0, 0), (rad, 0), (rad, h * 0.5), (rad, h), (rad + 1.5, h + 1), (rad - 1.5, h + 1), (rad - 1.5, 2.0), (0, 2.0)]

    def colour(p):
        band = (p[:, 2] > h * 0.3) & (p[:, 2] < h * 0.7) & (np.hypot(p[:, 0], p[:, 1]) > rad - 0.5)
        out = np.repeat(col[None], len(p), 0)
        out[band] = (0.85, 0.15, 0.15)
        return out

    return combine([paint(revolve(prof, 64), colour)], 50)


# ----------------------------------------------------------------------- distractors


def _pencil(rng):
    length = rng.uniform(120, 175)
    prof = [(0, 0), (0.6, 0.5), (3.2, 16), (4.0, 18), (4.0, length - 8), (3.8, length - 8), (3.8, length), (0, length)]

    def colour(p):
        z = p[:, 2]
        out = np.repeat(np.array([[0.98, 0.78, 0.10]]), len(p), 0)
        out[z < 16] = (0.90, 0.75, 0.55)
        out[z < 3] = (0.15, 0.15, 0.15)
        out[z > length - 8] = (0.95, 0.55, 0.60)
        return out

    mesh = paint(revolve(prof, 6), colour)
    pts = np.asarray(mesh.points)
    mesh.points = np.stack([pts[:, 2] - length / 2, pts[:, 1], pts[:, 0] + 4.0], axis=1)
    return combine([mesh], 30)


def _sticky_note(rng):
    a = rng.uniform(70, 80)
    palette = [(0.98, 0.92, 0.35), (0.98, 0.60, 0.75), (0.60, 0.90, 0.60)]
    return combine([paint(box((a, a, 0.6), (0, 0, 0.3), 3), jitter_colour(palette[rng.integers(3)], rng))])


def _ruler(rng):
    lx, ly = rng.uniform(150, 200), 25.0

    def colour(p):
        tick = (np.abs(((p[:, 0] + 200) % 10) - 5) > 4.6) & (p[:, 1] > ly / 2 - 6)
        out = np.repeat(np.array([[0.92, 0.92, 0.90]]), len(p), 0)
        out[tick] = (0.1, 0.1, 0.1)
        return out

    return combine([paint(box((lx, ly, 1.5), (0, 0, 0.75), 6), colour)])


def _types(kind: str, *entries) -> dict[str, ModelType]:
    return {name: ModelType(name, kind, build, spec, power, desc) for name, build, spec, power, desc in entries}


#: Item types: 15..60 mm across, each with its own shape, colour and pattern.
ITEM_TYPES: dict[str, ModelType] = _types(
    "item",
    ("bottle_cap", _bottle_cap, 0.3, 20, "red knurled plastic cap with a white ring"),
    ("coin", _coin, 0.8, 40, "gold coin with a raised rim"),
    ("cube", _cube, 0.3, 15, "blue plastic cube with dark edges"),
    ("ball", _ball, 0.15, 10, "orange ball with black seams"),
    ("hex_nut", _hex_nut, 0.9, 50, "steel hex nut"),
    ("toy_brick", _toy_brick, 0.4, 30, "yellow 2x4 toy brick with studs"),
    ("battery", _battery, 0.6, 30, "AA battery, black with a copper end"),
    ("wrapped_candy", _wrapped_candy, 0.5, 25, "pink and white striped candy with twisted ends"),
    ("cork", _cork, 0.05, 5, "speckled tan cork stopper"),
    ("button", _button, 0.4, 30, "purple four-hole button"),
    ("die", _die, 0.3, 30, "white die with black pips"),
    ("washer", _washer, 0.8, 40, "zinc washer"),
    ("domino", _domino, 0.5, 40, "black domino with white pips"),
    ("marble", _marble, 1.0, 80, "glass marble, teal with a white swirl"),
    ("eraser", _eraser, 0.1, 10, "white eraser with a blue sleeve"),
)

#: Item types used for training data (fixed split).
TRAIN_ITEM_TYPES: tuple[str, ...] = ("bottle_cap", "coin", "cube", "ball", "hex_nut", "toy_brick", "battery", "wrapped_candy", "cork", "button")
#: Item types never used for training (fixed split).
HELDOUT_ITEM_TYPES: tuple[str, ...] = ("die", "washer", "domino", "marble", "eraser")

#: Container types: 100..220 mm across.
CONTAINER_TYPES: dict[str, ModelType] = _types(
    "container",
    ("open_box", _open_box, 0.05, 5, "open cardboard box"),
    ("bowl", _bowl, 0.6, 40, "ceramic bowl"),
    ("tray", _tray, 0.3, 20, "plastic tray with a low rim"),
    ("tin", _tin, 0.8, 40, "round metal tin without a lid"),
)

#: Distractors: on the table, neither item nor container.
DISTRACTOR_TYPES: dict[str, ModelType] = _types(
    "distractor",
    ("pencil", _pencil, 0.3, 20, "yellow hexagonal pencil"),
    ("sticky_note", _sticky_note, 0.05, 5, "square sticky note"),
    ("ruler", _ruler, 0.3, 20, "white plastic ruler"),
)

ALL_TYPES: dict[str, ModelType] = {**ITEM_TYPES, **CONTAINER_TYPES, **DISTRACTOR_TYPES}

assert set(TRAIN_ITEM_TYPES) | set(HELDOUT_ITEM_TYPES) == set(ITEM_TYPES)  # a module invariant, not an input check
assert not set(TRAIN_ITEM_TYPES) & set(HELDOUT_ITEM_TYPES)


# ------------------------------------------------------------ procedural item types

#: Names of procedural item types: this prefix and a four-digit index (``proc_0042``).
PROCEDURAL_PREFIX = "proc_"
#: Names of marked procedural item types (``procm_0042``): a definition of their own, plus
#: marks placed anew on every instance (:func:`_instance_marks`).
MARKED_PREFIX = "procm_"
#: Seed of the procedural type family; type ``i`` draws its definition from
#: ``numpy.random.default_rng([PROCEDURAL_SEED, i])``.
PROCEDURAL_SEED = 20261122
#: Share of procedural types with an achromatic main colour (greys, white, black): the
#: held-out catalogue types the embedder confuses most are achromatic (weights/README.md).
PROCEDURAL_ACHROMATIC_SHARE = 0.35


def _random_colour(rng: np.random.Generator, achromatic: bool) -> np.ndarray:
    """An RGB colour in [0, 1]: a grey level if ``achromatic``, else a saturated hue."""
    if achromatic:
        v = float(rng.uniform(0.06, 0.97))
        return np.array(colorsys.hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.0, 0.08)), v))
    return np.array(colorsys.hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.35, 1.0)), float(rng.uniform(0.3, 1.0))))


def _procedural_definition(index: int, marked: bool = False) -> dict:
    """The fixed parameters of procedural type ``index`` (shape family, sizes in mm, colours, pattern).

    ``marked`` types draw from a stream of their own (``proc_0007`` and ``procm_0007`` are
    unrelated) and add the style of their instance marks.
    """
    rng = np.random.default_rng([PROCEDURAL_SEED, int(index), 1] if marked else [PROCEDURAL_SEED, int(index)])
    achromatic = bool(rng.uniform() < PROCEDURAL_ACHROMATIC_SHARE)
    family = str(rng.choice(["frustum", "ring", "box", "prism", "sphere", "dome", "rod", "stack"]))
    size = float(rng.uniform(16.0, 56.0))
    return {
        "family": family,
        "size_mm": size,
        "height_mm": float(np.clip(size * rng.uniform(0.12, 1.0), 2.0, 45.0)),
        "aspect": float(rng.uniform(0.35, 1.0)),
        "taper": float(rng.uniform(0.5, 1.3)),
        "hole": float(rng.uniform(0.25, 0.6)),
        "sides": int(rng.integers(3, 9)),
        "primary": _random_colour(rng, achromatic),
        "secondary": _random_colour(rng, bool(rng.uniform() < 0.5)),
        "pattern": str(rng.choice(["solid", "stripes", "top", "speckle", "rings", "checker"])),
        "period_mm": float(rng.uniform(3.0, 12.0)),
        "stripe_axis": int(rng.integers(0, 3)),
        "specular": float(rng.uniform(0.05, 0.9)),
        "specular_power": float(rng.uniform(5.0, 60.0)),
        **(_mark_definition(rng) if marked else {}),
    }


def _mark_definition(rng: np.random.Generator) -> dict:
    """The mark style of a marked procedural type: shape, colour, size, how many per instance."""
    light = bool(rng.uniform() < 0.5)
    shape = str(rng.choice(["dot", "stroke"]))
    # marks contrast with most bodies: near-black or near-white, sometimes a colour
    if rng.uniform() < 0.8:
        colour = _random_colour(rng, True) * 0.15 + (0.82 if light else 0.0)
    else:
        colour = _random_colour(rng, False)
    return {"mark_shape": shape, "mark_colour": colour, "mark_size": float(rng.uniform(0.04, 0.12)), "marks_max": int(rng.integers(3, 16))}


def _instance_marks(mesh: pv.PolyData, d: dict, rng: np.random.Generator) -> pv.PolyData:
    """Paint marks placed at random on one instance (pips, print, stickers, scuffs).

    Every instance of a marked type gets its own number (1..``marks_max``) and placement of
    marks of the type's shape, colour and size, so an instance and its faces look
    different from another instance of the same type: what a die's faces, a domino's pips
    or a printed label do to an item's look. Marks are centred on points above the bottom
    (``z > 0.5 mm``, the face on the table is never seen) and may reach down to its edge.
    """
    pts = np.asarray(mesh.points)
    up = np.flatnonzero(pts[:, 2] > 0.5)
    if len(up) == 0:
        return mesh
    extent = float(np.ptp(pts[:, :2], axis=0).max())
    radius = max(d["mark_size"] * extent, 0.8)
    near = np.zeros(len(pts), bool)
    for _ in range(int(rng.integers(1, d["marks_max"] + 1))):
        centre = pts[rng.choice(up)]
        if d["mark_shape"] == "dot":
            near |= np.sum((pts - centre) ** 2, axis=1) < radius**2
        else:  # a stroke: within radius / 3 of a segment 3 radii long through the centre
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            t = np.clip((pts - centre) @ direction, -1.5 * radius, 1.5 * radius)
            near |= np.sum((pts - centre - t[:, None] * direction) ** 2, axis=1) < (radius / 3) ** 2
    rgb = np.asarray(mesh.point_data["rgb"]).copy()
    rgb[near] = np.clip(np.round(jitter_colour(d["mark_colour"], rng) * 255), 0, 255).astype(np.uint8)
    mesh.point_data["rgb"] = rgb
    return mesh


def _procedural_colour(d: dict, primary: np.ndarray, secondary: np.ndarray, height_mm: float) -> Callable[[np.ndarray], np.ndarray]:
    pattern, period = d["pattern"], d["period_mm"]

    def colour(p):
        if pattern == "stripes":
            second = np.sin(2 * np.pi * p[:, d["stripe_axis"]] / period) > 0.3
        elif pattern == "top":
            second = p[:, 2] > 0.7 * height_mm
        elif pattern == "speckle":
            second = hash_noise(p, period / 3, seed=3) > 0.62
        elif pattern == "rings":
            second = np.sin(2 * np.pi * np.hypot(p[:, 0], p[:, 1]) / period) > 0.4
        elif pattern == "checker":
            second = (np.floor(p[:, 0] / period) + np.floor(p[:, 1] / period)) % 2 == 1
        else:
            second = np.zeros(len(p), bool)
        out = np.where(second[:, None], secondary[None], primary[None])
        return out * (0.9 + 0.1 * hash_noise(p, 2.0, seed=9)[:, None])

    return colour


def _fine(mesh: pv.PolyData, min_points: int = 1500) -> pv.PolyData:
    """Linearly subdivided triangles until the mesh has ``min_points``: patterns are painted per vertex."""
    mesh = mesh.triangulate()
    while mesh.n_points < min_points:
        mesh = mesh.subdivide(1, "linear")
    return mesh


def _procedural_build(index: int, marked: bool = False) -> Callable[[np.random.Generator], pv.PolyData]:
    d = _procedural_definition(index, marked)

    def build(rng):
        mesh = _procedural_body(d, rng)
        return _instance_marks(mesh, d, rng) if marked else mesh

    return build


def _procedural_body(d: dict, rng: np.random.Generator) -> pv.PolyData:
    """The body of one instance of a procedural type: shape family, sizes and painted pattern."""
    k = _s(rng, 0.06)
    size, h = d["size_mm"] * k, d["height_mm"] * k
    r = size / 2
    primary, secondary = jitter_colour(d["primary"], rng), jitter_colour(d["secondary"], rng)
    family = d["family"]
    if family == "frustum":
        mesh = revolve([(0, h), (r * min(d["taper"], 1.0), h), (r * min(1.0 / d["taper"], 1.0), 0), (0, 0)], 48)
    elif family == "ring":
        ri = r * d["hole"]
        mesh = revolve([(ri, h), (r, h), (r, 0), (ri, 0), (ri, h)], 48)
    elif family == "box":
        mesh = box((size, size * d["aspect"], h), (0, 0, h / 2), level=2)
    elif family == "prism":
        mesh = revolve([(0, h), (r, h), (r, 0), (0, 0)], d["sides"], phase_rad=float(rng.uniform(0, np.pi)))
    elif family == "sphere":
        mesh = sphere(r, (0, 0, r), 36)
        h = 2 * r
    elif family == "dome":
        arc = [(r * np.cos(a), h * np.sin(a)) for a in np.linspace(np.pi / 2, 0, 10)[1:]]
        mesh = revolve([(0, h)] + arc + [(0, 0)], 40)
    elif family == "rod":
        rr = max(r * d["aspect"] * 0.45, 2.0)
        rod = revolve([(0, -r), (rr, -r), (rr, r), (0, r)], 32)
        pts = np.asarray(rod.points)
        rod.points = np.stack([pts[:, 2], pts[:, 1], pts[:, 0] + rr], axis=1)
        mesh, h = rod, 2 * rr
    else:  # stack: a base slab and a smaller block on top, in the second colour
        hb = max(h * 0.5, 2.0)
        base = paint(_fine(box((size, size * d["aspect"], hb), (0, 0, hb / 2), level=2)), _procedural_colour(d, primary, secondary, hb))
        top = paint(revolve([(0, hb + h * 0.5), (r * 0.4, hb + h * 0.5), (r * 0.4, hb), (0, hb)], 32), secondary)
        return combine([base, top], 50)
    return combine([paint(_fine(mesh), _procedural_colour(d, primary, secondary, h))], 50)


def procedural_item_type(name: str) -> ModelType:
    """The procedural item type ``name`` (``proc_NNNN``): training data beyond the catalogue.

    Procedural types are random but fixed per index: a shape family (frustum, ring, box,
    polygonal prism, sphere, dome, lying rod, two-part stack), 16..56 mm across (the
    catalogue's 15..60 mm with the 6 % instance spread),
    a height of 2..45 mm, a main and a second colour (a share
    :data:`PROCEDURAL_ACHROMATIC_SHARE` of main colours are greys) and a surface pattern
    (solid, stripes, coloured top, speckle, rings, checker). Instances vary in size by 6 %
    and a little in colour. They widen the embedder's training set (how many kinds of
    object it learns to tell apart); they are never used for evaluation, and they are not
    drawn to imitate the held-out catalogue types (any likeness is chance).

    Marked types (``procm_NNNN``, :data:`MARKED_PREFIX`) are drawn the same way from a
    stream of their own, and every instance also carries its own random marks (dots or
    strokes of the type's colour and size, :func:`_instance_marks`): kinds whose
    instances and faces differ in their markings, as a die's faces or a domino's pips do,
    so that the embedder learns to group by what an instance's marks do not change.

    Parameters
    ----------
    name : str
        ``proc_`` or ``procm_`` followed by a non-negative index (``proc_0007``).

    Returns
    -------
    ModelType
        ``kind == "item"``.

    Raises
    ------
    KeyError
        If ``name`` is not a procedural type name.
    """
    if not is_procedural(name):
        raise KeyError(name)
    marked = name.startswith(MARKED_PREFIX)
    index = int(name[len(MARKED_PREFIX if marked else PROCEDURAL_PREFIX):])
    d = _procedural_definition(index, marked)
    desc = f"procedural {d['family']}, {d['size_mm']:.0f} mm, {d['pattern']}" + (f", {d['mark_shape']} marks" if marked else "")
    return ModelType(name, "item", _procedural_build(index, marked), d["specular"], d["specular_power"], desc)


def is_procedural(name: str) -> bool:
    """Whether ``name`` names a procedural item type (``proc_`` or ``procm_`` and digits)."""
    return any(name.startswith(prefix) and name[len(prefix):].isdigit() for prefix in (PROCEDURAL_PREFIX, MARKED_PREFIX))


def procedural_type_names(n: int, start: int = 0, marked: bool = False) -> tuple[str, ...]:
    """Names of ``n`` procedural types from index ``start`` (``proc_0000``, ...; ``procm_0000``, ... if ``marked``)."""
    prefix = MARKED_PREFIX if marked else PROCEDURAL_PREFIX
    return tuple(f"{prefix}{i:04d}" for i in range(start, start + n))


def is_item_type(name: str) -> bool:
    """Whether ``name`` is a catalogue item type or a procedural one."""
    return name in ITEM_TYPES or is_procedural(name)


def model_type(name: str) -> ModelType:
    """The model type of a catalogue name (:data:`ALL_TYPES`) or a procedural item name.

    Raises
    ------
    KeyError
        If ``name`` is neither.
    """
    if name in ALL_TYPES:
        return ALL_TYPES[name]
    return procedural_item_type(name)
