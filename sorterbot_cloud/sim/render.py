"""Offscreen PyVista renderer that looks through :class:`~sorterbot_cloud.camera.CameraModel`.

One :class:`SceneRenderer` keeps one plotter; a new scene replaces the actors, a new
frame only moves the camera. The VTK camera is set from the model's pose and
intrinsics: position = camera centre, focal point = centre + forward, view-up = -down,
vertical view angle = ``2 atan(H / 2 / fy')``, aspect ratio ``(W / fx') / (H / fy')``
(so fx' != fy' is honoured) and the window centre shifted by the principal point.

Photo effects (:func:`photo_effects`) turn the clean render into something closer to a
camera photo: exposure and white balance, vignetting, blur, sensor noise; the JPEG
quality is chosen when the frame is encoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import pyvista as pv

from sorterbot_cloud.camera import CameraModel
from sorterbot_cloud.sim.catalog import model_type
from sorterbot_cloud.sim.scene import Scene
from sorterbot_cloud.sim.textures import make_texture, paint_table_markings

#: Side of the square table plane (mm); covers everything the reference camera sees.
TABLE_SIZE_MM = 1700.0
#: Table texture resolution (pixels per side).
TEXTURE_SIZE_PX = 2048


@dataclass(frozen=True)
class PhotoParams:
    """Per-frame photo effects.

    Attributes
    ----------
    exposure_ev : float
        Exposure change in stops (image multiplied by ``2 ** exposure_ev``).
    white_balance : tuple of 3 float
        Per-channel gains.
    vignetting : float
        Brightness loss in the corners (0 none .. 0.5 strong).
    blur_sigma_px : float
        Gaussian blur sigma in pixels at 1640 px width (scaled with the frame).
    noise_sigma : float
        Sensor noise standard deviation in 8-bit levels.
    jpeg_quality : int
    """

    exposure_ev: float = 0.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    vignetting: float = 0.0
    blur_sigma_px: float = 0.0
    noise_sigma: float = 0.0
    jpeg_quality: int = 92

    @classmethod
    def random(cls, rng: np.random.Generator) -> "PhotoParams":
        """Domain-randomised effects of a cheap camera module."""
        return cls(
            exposure_ev=float(rng.normal(0.0, 0.25)),
            white_balance=tuple(float(g) for g in rng.uniform(0.93, 1.07, 3)),
            vignetting=float(rng.uniform(0.0, 0.35)),
            blur_sigma_px=float(rng.uniform(0.45, 1.5)),
            noise_sigma=float(rng.uniform(0.5, 5.0)),
            jpeg_quality=int(rng.integers(70, 96)),
        )


def photo_effects(image: np.ndarray, params: PhotoParams, rng: np.random.Generator) -> np.ndarray:
    """Apply exposure, white balance, vignetting, blur and noise.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8, RGB
    params : PhotoParams
    rng : numpy.random.Generator
        Draws the noise.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8, RGB
    """
    h, w = image.shape[:2]
    sigma = params.blur_sigma_px * w / 1640.0
    if sigma > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    img = image.astype(np.float32)
    # exposure, white balance and vignetting as one smooth gain map, built at 1/8 size
    gain = (2.0 ** params.exposure_ev) * np.asarray(params.white_balance, np.float32)
    small = _radius2(max(w // 8, 2), max(h // 8, 2))
    gmap = (1.0 - params.vignetting * small)[..., None] * gain[None, None, :]
    cv2.multiply(img, cv2.resize(gmap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), dst=img)
    if params.noise_sigma > 0:
        field = _noise_field(w, h)
        dy, dx = (int(v) for v in rng.integers(0, _NOISE_PAD, 2))
        cv2.scaleAdd(field[dy:dy + h, dx:dx + w], float(params.noise_sigma), img, dst=img)
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


_NOISE_PAD = 64
_NOISE_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _noise_field(w: int, h: int) -> np.ndarray:
    """Unit sensor-noise field (H + pad, W + pad, 3) float32: 2x2 chroma grain plus luminance noise.

    Generated once per size from a fixed seed; frames take randomly offset windows of it
    (drawn from their own generator), which keeps photo effects cheap and deterministic.
    """
    key = (w, h)
    if key not in _NOISE_CACHE:
        rng = np.random.default_rng(12345)
        hh, ww = h + _NOISE_PAD, w + _NOISE_PAD
        grain = rng.standard_normal((hh // 2 + 1, ww // 2 + 1, 3), dtype=np.float32)
        grain = cv2.resize(grain, (ww, hh), interpolation=cv2.INTER_NEAREST)
        luma = rng.standard_normal((hh, ww, 1), dtype=np.float32)
        _NOISE_CACHE[key] = np.ascontiguousarray(grain + 0.5 * luma)
    return _NOISE_CACHE[key]


def _radius2(w: int, h: int) -> np.ndarray:
    """Squared normalised distance from the image centre, halved (0 centre .. 1 corners), (h, w) float32."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return ((((x + 0.5) - w / 2) / (w / 2)) ** 2 + (((y + 0.5) - h / 2) / (h / 2)) ** 2) / 2.0


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """Encode an RGB uint8 image as JPEG bytes (OpenCV, baseline, 4:2:0)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arrays
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def set_camera_pose(plotter: pv.Plotter, rotation: np.ndarray, center_mm: np.ndarray, intrinsics: tuple[float, float, float, float],
                    width_px: int, height_px: int, clipping_mm: tuple[float, float] = (5.0, 4000.0)) -> None:
    """Set the plotter's VTK camera from a pinhole pose.

    Parameters
    ----------
    rotation : ndarray of shape (3, 3)
        World-to-camera rotation; rows are the camera's right, down and forward axes.
    center_mm : ndarray of shape (3,)
        Camera centre.
    intrinsics : (fx, fy, cx, cy)
        Pixels, for a ``width_px x height_px`` frame.
    clipping_mm : (near, far)
    """
    right, down, forward = np.asarray(rotation, float)
    fx, fy, cx, cy = intrinsics
    vcam = plotter.camera
    vcam.SetPosition(*center_mm)
    vcam.SetFocalPoint(*(np.asarray(center_mm, float) + 100.0 * forward))
    vcam.SetViewUp(*(-down))
    vcam.SetViewAngle(math.degrees(2 * math.atan(height_px / 2 / fy)))
    vcam.SetUseExplicitAspectRatio(True)
    vcam.SetExplicitAspectRatio((width_px / fx) / (height_px / fy))
    # principal point offset in normalised viewport units (VTK window y points up)
    vcam.SetWindowCenter(-(cx - width_px / 2) / (width_px / 2), (cy - height_px / 2) / (height_px / 2))
    vcam.SetClippingRange(*clipping_mm)


def set_camera(plotter: pv.Plotter, camera: CameraModel, theta_deg: float, width_px: int, height_px: int) -> None:
    """Point the plotter's VTK camera exactly as ``camera`` at base angle ``theta_deg``."""
    rotation, center = camera.pose(theta_deg)
    set_camera_pose(plotter, rotation, center, camera.intrinsics(width_px, height_px), width_px, height_px)


def table_plane() -> pv.PolyData:
    """Square table plane of :data:`TABLE_SIZE_MM` centred on the base, texture u along +x, v along +y.

    PyVista maps texture row 0 to v = 1, so texel ``(row, col)`` of an N x N texture lies at
    ``x = -S/2 + (col + 0.5) S/N``, ``y = S/2 - (row + 0.5) S/N``.
    """
    half = TABLE_SIZE_MM / 2
    plane = pv.Plane(center=(0, 0, 0), direction=(0, 0, 1), i_size=TABLE_SIZE_MM, j_size=TABLE_SIZE_MM, i_resolution=8, j_resolution=8)
    pts = np.asarray(plane.points)
    plane.active_texture_coordinates = np.stack([(pts[:, 0] + half) / TABLE_SIZE_MM, (pts[:, 1] + half) / TABLE_SIZE_MM], axis=1)
    return plane


def sample_lights(rng: np.random.Generator) -> dict:
    """Random key light (direction, intensity, colour), a fill light and ambient level.

    Returns
    -------
    dict
        ``lights`` (list of pyvista.Light), ``key_direction`` (unit vector towards the key
        light, (3,)), ``ambient``, ``shadow_strength`` (0..1), ``shadow_softness_mm``.
    """
    az = rng.uniform(0, 2 * np.pi)
    el = np.radians(rng.uniform(35, 75))
    direction = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    warmth = rng.uniform(-1, 1)
    colour = np.clip(np.array([1.0, 1.0 - 0.04 * abs(warmth), 1.0 - 0.12 * warmth]) if warmth > 0 else np.array([1.0 + 0.08 * warmth, 1.0, 1.0]), 0, 1)
    key_intensity = float(rng.uniform(0.75, 1.1))
    key = pv.Light(position=tuple(1500 * direction), focal_point=(0, 0, 0), color=tuple(float(c) for c in colour),
                   intensity=key_intensity, light_type="scene light")
    key.positional = False
    fill_intensity = float(rng.uniform(0.25, 0.45))
    fill = pv.Light(position=(0, 0, 1500), focal_point=(0, 0, 0), color=(1.0, 1.0, 1.0), intensity=fill_intensity, light_type="scene light")
    fill.positional = False
    return {
        "lights": [key, fill],
        "key_direction": direction,
        "ambient": float(rng.uniform(0.25, 0.4)),
        "shadow_strength": float(np.clip(0.55 * key_intensity / (key_intensity + fill_intensity) + rng.uniform(-0.1, 0.1), 0.2, 0.6)),
        "shadow_softness_mm": float(rng.uniform(1.0, 4.0)),
    }


def bake_shadows(texture: np.ndarray, objects, light_direction: np.ndarray, strength: float = 0.45, softness_mm: float = 2.0) -> np.ndarray:
    """Darken a table texture where objects cast shadows from a directional light.

    Parameters
    ----------
    texture : ndarray of shape (N, N, 3), uint8
        Covers the table plane of :func:`table_plane`.
    objects : iterable of SceneObject
        Their world meshes cast the shadows.
    light_direction : ndarray of shape (3,)
        Unit vector from the table towards the light (z > 0).
    strength : float
        Fraction of light removed in full shadow.
    softness_mm : float
        Gaussian blur of the shadow edge.

    Returns
    -------
    ndarray of shape (N, N, 3), uint8
    """
    n = texture.shape[0]
    scale = n / TABLE_SIZE_MM
    half = TABLE_SIZE_MM / 2
    cast = np.zeros((n, n), np.float32)
    contact = np.zeros((n, n), np.float32)
    d = np.asarray(light_direction, float)
    for obj in objects:
        pts = np.asarray(obj.mesh.points)
        flat = pts[:, :2] - pts[:, 2:3] / d[2] * d[None, :2]
        for target, xy in ((cast, flat), (contact, pts[pts[:, 2] < 0.25 * max(obj.height_mm, 1.0), :2])):
            if len(xy) < 3:
                continue
            cols = (xy[:, 0] + half) * scale
            rows = (half - xy[:, 1]) * scale
            hull = cv2.convexHull(np.stack([cols, rows], axis=1).astype(np.float32))
            cv2.fillPoly(target, [np.round(hull * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
    sigma = max(softness_mm * scale, 0.5)
    cast = cv2.GaussianBlur(cast, (0, 0), sigma)
    contact = cv2.GaussianBlur(contact, (0, 0), 3.0 * scale + sigma)
    shade = 1.0 - np.clip(strength * cast + 0.25 * contact, 0, 0.85)
    return np.clip(texture.astype(np.float32) * shade[..., None] + 0.5, 0, 255).astype(np.uint8)


class SceneRenderer:
    """Renders scenes through a camera model; one offscreen plotter for its lifetime.

    Parameters
    ----------
    width_px, height_px : int
        Frame size.
    camera : CameraModel, optional
        Default :meth:`CameraModel.reference`.
    shadows : bool
        Use VTK shadow maps (slower).
    anti_aliasing : {"msaa", "ssaa", None}
        None (default) renders without anti-aliasing: fastest on a software OpenGL.
    texture_size_px : int, optional
        Table texture side; default scales with the frame width (2048 at 1640 px).
    """

    def __init__(self, width_px: int = 1640, height_px: int = 1232, camera: CameraModel | None = None,
                 shadows: bool = False, anti_aliasing: str | None = None,
                 texture_size_px: int | None = None):
        self.width_px = int(width_px)
        self.height_px = int(height_px)
        self.camera = camera or CameraModel.reference()
        self.plotter = pv.Plotter(off_screen=True, window_size=(self.width_px, self.height_px), lighting="none")
        self.plotter.set_background((0.30, 0.30, 0.32))
        # PyVista's theme turns on 8x MSAA, which costs llvmpipe ~4x the frame time; frames
        # get a slight optical blur in photo_effects instead
        self.plotter.disable_anti_aliasing()
        if anti_aliasing:
            self.plotter.enable_anti_aliasing(anti_aliasing)
        self.shadows = shadows
        self.texture_size_px = int(texture_size_px or min(TEXTURE_SIZE_PX, 256 * 2 ** int(np.ceil(np.log2(max(self.width_px, 256) / 205)))))
        if shadows:
            self.plotter.enable_shadows()
        self._table = table_plane()
        self._scene_key = None

    def close(self) -> None:
        """Release the plotter."""
        self.plotter.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_scene(self, scene: Scene) -> None:
        """Replace the actors and the lights with those of ``scene``.

        Shadows are baked into the table texture: each object's mesh is projected onto
        the table along the key light's direction, its convex hull is filled and
        blurred, and the texture is darkened there (plus a tighter contact shadow).
        """
        p = self.plotter
        p.clear_actors()
        p.remove_all_lights()
        light_rng = np.random.default_rng(scene.lighting_seed)
        lights = sample_lights(light_rng)
        tex_rng = np.random.default_rng(scene.texture_seed)
        image = make_texture(scene.texture, tex_rng, self.texture_size_px)
        if scene.table_markings:
            image = paint_table_markings(image, np.random.default_rng([scene.texture_seed, 1]), scene.table_markings,
                                         self.texture_size_px / TABLE_SIZE_MM)
        image = bake_shadows(image, list(scene.objects) + list(scene.distractors), lights["key_direction"],
                             strength=lights["shadow_strength"], softness_mm=lights["shadow_softness_mm"])
        texture = pv.Texture(image)
        texture.interpolate = True
        texture.mipmap = True
        p.add_mesh(self._table, texture=texture, ambient=lights["ambient"], diffuse=0.85,
                   specular=float(light_rng.uniform(0, 0.12)), specular_power=10, interpolation="phong", name="table", render=False)
        for obj in list(scene.objects) + list(scene.distractors):
            kind = model_type(obj.type)
            p.add_mesh(obj.mesh, scalars="rgb", rgb=True, smooth_shading=True, ambient=lights["ambient"], diffuse=0.85,
                       specular=kind.specular, specular_power=kind.specular_power, name=f"{obj.cls}{obj.object_id}",
                       show_scalar_bar=False, interpolation="phong", render=False)
        for light in lights["lights"]:
            p.add_light(light)

    def render(self, theta_deg: float, camera: CameraModel | None = None) -> np.ndarray:
        """Clean render (no photo effects) at base angle ``theta_deg``.

        Returns
        -------
        ndarray of shape (height_px, width_px, 3), uint8, RGB
        """
        set_camera(self.plotter, camera or self.camera, theta_deg, self.width_px, self.height_px)
        self.plotter.render()
        img = self.plotter.screenshot(return_img=True)
        return np.ascontiguousarray(img[..., :3])
