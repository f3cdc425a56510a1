"""Random table scenes: items, containers and distractors around the arm base.

World frame of docs/design.rst: origin on the table at the base axis, z up, theta = 0 along
+x, counter-clockwise seen from above. Objects are placed by rejection sampling so that
their footprint discs (radius = the farthest mesh point from the footprint centre, plus
a gap) never overlap; items therefore never lie inside containers. Items are also kept
out of every container's *shadow* as seen from the arm (:func:`in_shadow`): the camera
turns on a small circle around the base, so an item behind a container on a ray from the
base would be hidden on every frame, and no arm could count or sort it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyvista as pv

from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.sim.catalog import (
    CONTAINER_TYPES,
    DISTRACTOR_TYPES,
    HELDOUT_ITEM_TYPES,
    ITEM_TYPES,
    TRAIN_ITEM_TYPES,
    is_item_type,
    model_type,
)
from sorterbot_cloud.sim.meshes import rotate_z
from sorterbot_cloud.sim.textures import HELDOUT_TEXTURES, TEXTURES, TRAIN_TEXTURES

#: Version of the scene layout rules: the same seed lays out the same scene only within a
#: version. 2: items are kept out of the containers' shadows (:func:`in_shadow`).
SCENE_VERSION = 2

#: Reach of item centres (mm from the base axis).
ITEM_R_RANGE_MM = (180.0, 430.0)
#: Reach of container centres (mm); containers are large, so they get a little more room.
CONTAINER_R_RANGE_MM = (200.0, 450.0)
#: Angular span of object centres (degrees); the default frames cover about -44..+44.
THETA_RANGE_DEG = (-40.0, 40.0)
#: Gap kept between footprints (mm).
GAP_MM = 6.0


@dataclass
class SceneObject:
    """One placed object.

    Attributes
    ----------
    object_id : int
    cls : {"item", "container", "distractor"}
    type : str
    x_mm, y_mm : float
        Footprint centre on the table plane.
    yaw_deg : float
        Rotation about z.
    mesh : pyvista.PolyData
        World-frame mesh with the ``"rgb"`` point array.
    size_mm : float
        Largest horizontal extent (footprint diameter across its widest direction).
    height_mm : float
    """

    object_id: int
    cls: str
    type: str
    x_mm: float
    y_mm: float
    yaw_deg: float
    mesh: pv.PolyData
    size_mm: float
    height_mm: float
    footprint_radius_mm: float

    @property
    def r_mm(self) -> float:
        """Distance of the footprint centre from the base axis."""
        return float(np.hypot(self.x_mm, self.y_mm))

    @property
    def theta_deg(self) -> float:
        """Polar angle of the footprint centre (degrees, counter-clockwise from +x)."""
        return float(np.degrees(np.arctan2(self.y_mm, self.x_mm)))

    def to_json(self) -> dict:
        """Ground-truth record (CONTRIBUTING.md schema plus ``yaw_deg``)."""
        return {
            "object_id": self.object_id,
            "class": self.cls,
            "type": self.type,
            "x_mm": round(self.x_mm, 3),
            "y_mm": round(self.y_mm, 3),
            "r_mm": round(self.r_mm, 3),
            "theta_deg": round(self.theta_deg, 4),
            "size_mm": round(self.size_mm, 2),
            "height_mm": round(self.height_mm, 2),
            "yaw_deg": round(self.yaw_deg, 2),
        }


@dataclass
class Scene:
    """A table with objects, a texture and a lighting set-up (all seeded)."""

    objects: list[SceneObject]
    texture: str
    texture_seed: int
    lighting_seed: int
    distractors: list[SceneObject] = field(default_factory=list)
    #: Flat markings painted on the table (``textures.paint_table_markings``), never annotated.
    table_markings: int = 0

    @property
    def items(self) -> list[SceneObject]:
        return [o for o in self.objects if o.cls == "item"]

    @property
    def containers(self) -> list[SceneObject]:
        return [o for o in self.objects if o.cls == "container"]


def build_object(type_name: str, rng: np.random.Generator) -> tuple[pv.PolyData, float, float]:
    """Build one instance of a type in its local frame.

    Returns
    -------
    mesh : pyvista.PolyData
    footprint_radius_mm : float
        Farthest mesh point from the z axis.
    height_mm : float
    """
    mesh = model_type(type_name).build(rng)
    pts = np.asarray(mesh.points)
    return mesh, float(np.hypot(pts[:, 0], pts[:, 1]).max()), float(pts[:, 2].max())


def place_object(mesh: pv.PolyData, x_mm: float, y_mm: float, yaw_deg: float) -> pv.PolyData:
    """Copy of a local-frame mesh rotated by ``yaw_deg`` and moved to ``(x_mm, y_mm)``."""
    out = mesh.copy()
    out.points = rotate_z(np.asarray(mesh.points), yaw_deg) + np.array([x_mm, y_mm, 0.0])
    if "Normals" in out.point_data:
        out.point_data["Normals"] = rotate_z(np.asarray(mesh.point_data["Normals"]), yaw_deg)
    return out


def _footprint_extent(mesh: pv.PolyData) -> float:
    pts = np.asarray(mesh.points)
    b = pts[:, :2].max(axis=0) - pts[:, :2].min(axis=0)
    return float(max(b))


def in_shadow(x_mm: float, y_mm: float, radius_mm: float, blockers: Sequence[tuple[float, float, float]]) -> bool:
    """Whether an item would hide behind a container, seen from the arm's base.

    The camera stays within a few centimetres of the base axis (``CameraModel.offset_mm``),
    so an object behind a container on a ray from the base is hidden on every frame. The
    item (footprint centre ``x_mm, y_mm``, footprint radius ``radius_mm``) is in the shadow
    of a container (centre, footprint radius) when its centre is farther from the base than
    the container's and lies less than the container's radius plus half its own from the
    ray through the container's centre (less than half of it would stick out sideways).
    Conservative: it ignores that a low tray may let a tall item's top show.

    Parameters
    ----------
    x_mm, y_mm, radius_mm : float
    blockers : sequence of (x_mm, y_mm, radius_mm)
        The containers.

    Returns
    -------
    bool
    """
    r_item = float(np.hypot(x_mm, y_mm))
    for cx, cy, cr in blockers:
        r_c = float(np.hypot(cx, cy))
        if r_c <= 0 or r_item <= r_c:
            continue
        lateral = abs(x_mm * cy - y_mm * cx) / r_c  # distance of the item centre from the base -> container ray
        if lateral < cr + 0.5 * radius_mm:
            return True
    return False


def _sample_position(rng, r_range, theta_range, radius, placed, tries=400, blockers=()):
    r0, r1 = r_range
    for _ in range(tries):
        r = np.sqrt(rng.uniform(r0**2, r1**2))  # uniform over area
        t = np.radians(rng.uniform(*theta_range))
        x, y = r * np.cos(t), r * np.sin(t)
        if all(np.hypot(x - px, y - py) >= radius + pr + GAP_MM for px, py, pr in placed) and not in_shadow(x, y, radius, blockers):
            return float(x), float(y)
    return None


def generate_scene(
    rng: np.random.Generator,
    item_types: Sequence[str],
    n_containers: int,
    container_types: Sequence[str] | None = None,
    n_distractors: int = 0,
    textures: Sequence[str] = TRAIN_TEXTURES,
    item_r_range_mm: tuple[float, float] = ITEM_R_RANGE_MM,
    theta_range_deg: tuple[float, float] = THETA_RANGE_DEG,
) -> Scene:
    """Place the given items, ``n_containers`` containers and distractors on a table.

    Parameters
    ----------
    rng : numpy.random.Generator
    item_types : sequence of str
        Type of every item to place (one entry per item, repeats allowed).
    n_containers : int
    container_types : sequence of str, optional
        Container types to draw from (default: all).
    n_distractors : int
    textures : sequence of str
        Table textures to draw from.

    Returns
    -------
    Scene
        Objects numbered from 0: containers first, then items.

    Raises
    ------
    BadRequest
        If a type or texture is unknown, or the objects cannot be placed without overlap
        (or, for items, out of the containers' shadows, :func:`in_shadow`).
    """
    for name in item_types:
        if not is_item_type(name):
            raise BadRequest(f"unknown item type {name!r}; expected one of {sorted(ITEM_TYPES)} or proc_NNNN")
    container_types = tuple(container_types or CONTAINER_TYPES)
    for name in container_types:
        if name not in CONTAINER_TYPES:
            raise BadRequest(f"unknown container type {name!r}; expected one of {sorted(CONTAINER_TYPES)}")
    for name in textures:
        if name not in TEXTURES:
            raise BadRequest(f"unknown texture {name!r}; expected one of {sorted(TEXTURES)}")
    if n_containers < 0 or n_distractors < 0:
        raise BadRequest("n_containers and n_distractors must be >= 0")

    placed: list[tuple[float, float, float]] = []
    objects: list[SceneObject] = []
    c_range = (CONTAINER_R_RANGE_MM[0], CONTAINER_R_RANGE_MM[1])
    wide_theta = (theta_range_deg[0] - 2, theta_range_deg[1] + 2)

    def add(cls, type_name, r_range, theta_range, store, attempts=12):
        for _ in range(attempts):
            local, radius, height = build_object(type_name, rng)
            blockers = [(o.x_mm, o.y_mm, o.footprint_radius_mm) for o in objects if o.cls == "container"] if cls == "item" else ()
            pos = _sample_position(rng, r_range, theta_range, radius, placed, blockers=blockers)
            if pos is None:
                continue
            yaw = float(rng.uniform(0, 360))
            world = place_object(local, pos[0], pos[1], yaw)
            obj = SceneObject(len(store), cls, type_name,
                              pos[0], pos[1], yaw, world, _footprint_extent(world), height, radius)
            placed.append((pos[0], pos[1], radius))
            store.append(obj)
            return
        raise BadRequest(f"could not place {cls} {type_name!r} without overlap ({len(placed)} objects placed); use fewer objects")

    distractors_out: list[SceneObject] = []
    for _ in range(n_containers):
        add("container", str(rng.choice(container_types)), c_range, wide_theta, objects)
    for name in item_types:
        add("item", name, item_r_range_mm, theta_range_deg, objects)
    for _ in range(n_distractors):
        add("distractor", str(rng.choice(sorted(DISTRACTOR_TYPES))), (120.0, 560.0), (-70.0, 70.0), distractors_out, attempts=3)
    for i, d in enumerate(distractors_out):
        d.object_id = 1000 + i
    texture = str(rng.choice(list(textures)))
    return Scene(objects, texture, int(rng.integers(2**31)), int(rng.integers(2**31)), distractors_out)


def choose_item_types(rng: np.random.Generator, n_items: int, n_item_types: int, pool: Sequence[str]) -> list[str]:
    """Pick ``n_item_types`` distinct types from ``pool`` and assign one to each of ``n_items`` items.

    Every chosen type appears at least once.

    Raises
    ------
    BadRequest
        If ``n_item_types`` exceeds ``n_items`` or the pool, or is below 1 while items are requested.
    """
    if n_items == 0:
        return []
    if not 1 <= n_item_types <= min(n_items, len(pool)):
        raise BadRequest(f"n_item_types must be in 1..{min(n_items, len(pool))} for {n_items} items, got {n_item_types}")
    chosen = [str(t) for t in rng.choice(list(pool), size=n_item_types, replace=False)]
    rest = [str(t) for t in rng.choice(chosen, size=n_items - n_item_types)]
    types = chosen + rest
    rng.shuffle(types)
    return types


def split_pools(heldout: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(item types, textures) of the training or the held-out split."""
    return (HELDOUT_ITEM_TYPES, HELDOUT_TEXTURES) if heldout else (TRAIN_ITEM_TYPES, TRAIN_TEXTURES)
