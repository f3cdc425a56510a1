"""``views`` mode: render one 3D model from many directions with COCO and YOLO boxes.

This is the CAD-to-training-images recipe: the camera orbits the model at azimuth
0..360 degrees, altitude -40..+40 degrees and roll (tilt) -15..+15 degrees, all in
15-degree steps by default, looking at the model's centre; each view gets a random
background, light and photo effects, and the model's box is the projection of its mesh
points through the same pinhole the renderer's VTK camera is set from.

Models come from the catalogue (a type name), from a mesh file read by PyVista (STL,
OBJ, PLY, VTK/VTP) or from a STEP file meshed with gmsh (OpenCASCADE kernel).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pyvista as pv
from tqdm import tqdm

from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.sim.catalog import ALL_TYPES, is_procedural, model_type
from sorterbot_cloud.sim.meshes import paint
from sorterbot_cloud.sim.render import PhotoParams, encode_jpeg, photo_effects, sample_lights, set_camera_pose

MESH_SUFFIXES = (".stl", ".obj", ".ply", ".vtk", ".vtp")
STEP_SUFFIXES = (".step", ".stp")
#: Default orbit, degrees: np.arange(start, stop + 1e-9, 15).
DEFAULT_AZIMUTHS_DEG = tuple(float(a) for a in np.arange(0, 360, 15))
DEFAULT_ALTITUDES_DEG = tuple(float(a) for a in np.arange(-40, 40 + 1e-9, 15))
DEFAULT_TILTS_DEG = (-15.0, 0.0, 15.0)


def read_step(path: str | Path, mesh_size_mm: float | None = None) -> pv.PolyData:
    """Triangulate a STEP file's surfaces with gmsh.

    Parameters
    ----------
    path : str or Path
    mesh_size_mm : float, optional
        Largest triangle edge; default 1/40 of the model's bounding-box diagonal.

    Returns
    -------
    pyvista.PolyData
        Triangles in the file's units (STEP files are usually in millimetres).

    Raises
    ------
    BadRequest
        If gmsh is not installed or the file yields no surface triangles.
    """
    try:
        import gmsh
    except ImportError as exc:  # pragma: no cover - gmsh is pinned in requirements.txt
        raise BadRequest("reading STEP files needs gmsh (pip install gmsh)") from exc
    gmsh.initialize(interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("General.Verbosity", 0)
        gmsh.open(str(path))
        xmin, ymin, zmin, xmax, ymax, zmax = gmsh.model.getBoundingBox(-1, -1)
        diag = math.dist((xmin, ymin, zmin), (xmax, ymax, zmax))
        gmsh.option.setNumber("Mesh.MeshSizeMax", float(mesh_size_mm or max(diag / 40, 1e-3)))
        gmsh.model.mesh.generate(2)
        tags, coords, _ = gmsh.model.mesh.getNodes()
        _, _, elem_nodes = gmsh.model.mesh.getElements(2)
    finally:
        gmsh.finalize()
    triangles = [np.asarray(n, np.int64).reshape(-1, 3) for n in elem_nodes if len(n) % 3 == 0]
    if not triangles or not len(tags):
        raise BadRequest(f"no surface triangles in STEP file {path}")
    index = np.full(int(np.max(tags)) + 1, -1, np.int64)
    index[np.asarray(tags, np.int64)] = np.arange(len(tags))
    tri = index[np.concatenate(triangles)]
    faces = np.hstack([np.full((len(tri), 1), 3), tri]).ravel()
    return pv.PolyData(np.asarray(coords, float).reshape(-1, 3), faces)


def load_model(model: str | Path, colour: Sequence[float] | None = None, size_mm: float | None = None,
               rng: np.random.Generator | None = None) -> pv.PolyData:
    """A painted model mesh from a catalogue type name or a mesh / STEP file.

    Parameters
    ----------
    model : str or Path
        Catalogue type (e.g. ``"hex_nut"``) or a file path.
    colour : (r, g, b) in [0, 1], optional
        Paint colour for files (default light grey); ignored for catalogue types.
    size_mm : float, optional
        Rescale so the largest bounding-box side is this long.

    Returns
    -------
    pyvista.PolyData
        With ``"rgb"`` (uint8) and normals.

    Raises
    ------
    BadRequest
        If the model is neither a known type nor a readable file of a supported kind.
    """
    rng = rng or np.random.default_rng(0)
    name = str(model)
    if name in ALL_TYPES or is_procedural(name):
        mesh = model_type(name).build(rng)
    else:
        path = Path(name)
        suffix = path.suffix.lower()
        if not path.is_file():
            raise BadRequest(f"{name!r} is neither a model type ({sorted(ALL_TYPES)}) nor an existing file (procedural types: proc_NNNN)")
        if suffix in STEP_SUFFIXES:
            mesh = read_step(path)
        elif suffix in MESH_SUFFIXES:
            data = pv.read(path)
            mesh = data.extract_surface() if not isinstance(data, pv.PolyData) else data
        else:
            raise BadRequest(f"unsupported model file {path.name}; expected one of {MESH_SUFFIXES + STEP_SUFFIXES}")
        if mesh.n_points == 0:
            raise BadRequest(f"model file {path.name} holds no geometry")
        mesh = paint(mesh.triangulate(), colour if colour is not None else (0.75, 0.75, 0.72))
        mesh = mesh.compute_normals(split_vertices=True, feature_angle=35)
    if size_mm is not None:
        extent = float(max(np.ptp(np.asarray(mesh.points), axis=0)))
        if extent <= 0:
            raise BadRequest("model has zero extent")
        mesh = mesh.copy()
        mesh.points = np.asarray(mesh.points) * (size_mm / extent)
    return mesh


def orbit_pose(target_mm: np.ndarray, distance_mm: float, azimuth_deg: float, altitude_deg: float, tilt_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera looking at ``target_mm`` from the given orbit position, rolled by ``tilt_deg``.

    Returns
    -------
    rotation : ndarray of shape (3, 3)
        Rows: right, down, forward (world-to-camera), as :meth:`CameraModel.pose`.
    center_mm : ndarray of shape (3,)
    """
    az, alt, tilt = (math.radians(v) for v in (azimuth_deg, altitude_deg, tilt_deg))
    offset = np.array([math.cos(alt) * math.cos(az), math.cos(alt) * math.sin(az), math.sin(alt)])
    center = np.asarray(target_mm, float) + distance_mm * offset
    forward = -offset
    right0 = np.cross(forward, [0.0, 0.0, 1.0])
    right0 /= np.linalg.norm(right0)
    down0 = np.cross(forward, right0)
    right = math.cos(tilt) * right0 + math.sin(tilt) * down0
    down = np.cross(forward, right)
    return np.stack([right, down, forward]), center


def project_pinhole(points_mm: np.ndarray, rotation: np.ndarray, center_mm: np.ndarray, intrinsics) -> np.ndarray:
    """Pinhole projection (N, 3) -> (N, 2) pixels, same convention as :meth:`CameraModel.project`."""
    fx, fy, cx, cy = intrinsics
    cam = (np.asarray(points_mm, float) - center_mm) @ np.asarray(rotation).T
    return np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], axis=1)


def render_views(
    model: str | Path,
    out_dir: str | Path,
    *,
    colour: Sequence[float] | None = None,
    size_mm: float | None = None,
    category: str = "item",
    width_px: int = 640,
    height_px: int = 480,
    vertical_fov_deg: float = 48.8,
    fill: float = 0.55,
    azimuths_deg: Sequence[float] = DEFAULT_AZIMUTHS_DEG,
    altitudes_deg: Sequence[float] = DEFAULT_ALTITUDES_DEG,
    tilts_deg: Sequence[float] = DEFAULT_TILTS_DEG,
    seed: int = 0,
    background: Sequence[float] | None = None,
    progress: bool = True,
) -> Path:
    """Render a model from every (azimuth, altitude, tilt) and write COCO and YOLO boxes.

    Parameters
    ----------
    model : str or Path
        Catalogue type name or mesh / STEP file (see :func:`load_model`).
    out_dir : str or Path
        Receives ``images/<name>.jpg``, ``labels/<name>.txt`` (YOLO: ``class cx cy w h``,
        normalised), ``classes.txt`` and ``annotations.json`` (COCO, one category).
    colour, size_mm : see :func:`load_model`.
    category : str
        Class name written to COCO (id 1) and YOLO (index 0).
    width_px, height_px : int
    vertical_fov_deg : float
        Field of view of the pinhole (default: the reference camera's 48.8 deg).
    fill : float
        Fraction of the frame height the model's bounding sphere spans.
    azimuths_deg, altitudes_deg, tilts_deg : sequence of float
        Orbit grid (defaults: 0..345, -40..35, -15..15 in 15 degree steps).
    seed : int
        Backgrounds, lights and photo effects.
    background : (r, g, b) in [0, 1], optional
        Fixed background colour; default a random vertical gradient per view.

    Returns
    -------
    Path
        ``annotations.json``.

    Raises
    ------
    BadRequest
        On an unknown model, unreadable file or an altitude outside (-90, 90).
    """
    if not 0 < fill <= 1:
        raise BadRequest(f"fill must be in (0, 1], got {fill}")
    if any(abs(a) >= 89 for a in altitudes_deg):
        raise BadRequest("altitudes must be within (-89, 89) degrees")
    rng = np.random.default_rng(seed)
    mesh = load_model(model, colour=colour, size_mm=size_mm, rng=rng)
    pts = np.asarray(mesh.points)
    target = (pts.min(axis=0) + pts.max(axis=0)) / 2
    radius = float(np.linalg.norm(pts - target, axis=1).max())
    fy = height_px / 2 / math.tan(math.radians(vertical_fov_deg) / 2)
    intrinsics = (fy, fy, width_px / 2, height_px / 2)
    distance = radius / math.sin(math.atan(fill * math.tan(math.radians(vertical_fov_deg) / 2)))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text(category + "\n")
    stem = Path(str(model)).stem
    plotter = pv.Plotter(off_screen=True, window_size=(width_px, height_px), lighting="none")
    plotter.disable_anti_aliasing()  # see SceneRenderer: MSAA is slow on llvmpipe; photo_effects blurs
    plotter.add_mesh(mesh, scalars="rgb", rgb=True, smooth_shading=True, ambient=0.3, diffuse=0.85, specular=0.3, specular_power=20,
                     show_scalar_bar=False, interpolation="phong")
    grid = [(a, b, c) for a in azimuths_deg for b in altitudes_deg for c in tilts_deg]
    images, annotations = [], []
    try:
        for az, alt, tilt in tqdm(grid, desc=f"views {stem}", unit="view", disable=not progress):
            rotation, center = orbit_pose(target, distance, az, alt, tilt)
            set_camera_pose(plotter, rotation, center, intrinsics, width_px, height_px, (distance * 0.05, distance * 4))
            plotter.remove_all_lights()
            for light in sample_lights(rng)["lights"]:
                plotter.add_light(light)
            plotter.add_light(pv.Light(light_type="headlight", intensity=float(rng.uniform(0.2, 0.4))))  # views from below stay visible
            top, bottom = rng.uniform(0.1, 0.95, 3), rng.uniform(0.1, 0.95, 3)
            if background is None:
                plotter.set_background(tuple(bottom), top=tuple(top))
            else:
                plotter.set_background(tuple(float(c) for c in background))
            plotter.render()
            image = np.ascontiguousarray(plotter.screenshot(return_img=True)[..., :3])
            params = PhotoParams.random(rng)
            image = photo_effects(image, params, rng)
            name = f"{stem}_az{az:+04.0f}_alt{alt:+03.0f}_tilt{tilt:+03.0f}"
            (out / "images" / f"{name}.jpg").write_bytes(encode_jpeg(image, params.jpeg_quality))
            uv = project_pinhole(pts, rotation, center, intrinsics)
            x0, y0 = np.clip(uv.min(axis=0), 0, [width_px, height_px])
            x1, y1 = np.clip(uv.max(axis=0), 0, [width_px, height_px])
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{name}.jpg", "width": width_px, "height": height_px,
                           "azimuth_deg": az, "altitude_deg": alt, "tilt_deg": tilt})
            w, h = float(x1 - x0), float(y1 - y0)
            annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [round(float(x0), 2), round(float(y0), 2), round(w, 2), round(h, 2)],
                                "area": round(w * h, 2), "iscrowd": 0})
            (out / "labels" / f"{name}.txt").write_text(
                f"0 {(x0 + x1) / 2 / width_px:.6f} {(y0 + y1) / 2 / height_px:.6f} {w / width_px:.6f} {h / height_px:.6f}\n")
    finally:
        plotter.close()
    coco = {"info": {"description": f"views of {model}", "version": "1"}, "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": category, "supercategory": "object"}]}
    path = out / "annotations.json"
    path.write_text(json.dumps(coco))
    return path
