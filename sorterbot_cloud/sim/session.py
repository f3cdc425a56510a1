"""Simulated arm sessions: frames at the arm's pulse widths plus exact ground truth.

Ground-truth boxes are computed by projecting every object's mesh points with
:meth:`CameraModel.project` (the same model the renderer's VTK camera is set from),
so the boxes and the pixels agree by construction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from sorterbot_cloud.camera import ArmConstants, CameraModel
from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.sim.render import PhotoParams, SceneRenderer, encode_jpeg, photo_effects
from sorterbot_cloud.sim.scene import SCENE_VERSION, SceneObject, choose_item_types, generate_scene, split_pools

#: Default pulse widths of the reference arm's frames (µs): 1000..1950 step 50.
DEFAULT_PULSE_WIDTHS: tuple[int, ...] = tuple(range(1000, 1951, 50))
#: Boxes whose visible fraction (clipped / unclipped box area) is below this are dropped.
MIN_VISIBLE_FRACTION = 0.3


def object_box(obj: SceneObject, camera: CameraModel, theta_deg: float, width_px: int, height_px: int) -> tuple[list[float], float] | None:
    """Ground-truth box of one object in one frame.

    Parameters
    ----------
    obj : SceneObject
    camera : CameraModel
    theta_deg : float
        Base angle of the frame.
    width_px, height_px : int

    Returns
    -------
    (box_xyxy, visible_fraction) or None
        ``box_xyxy``: [x0, y0, x1, y1] float pixels clipped to the image; ``visible_fraction``:
        clipped area / unclipped area of the box of all projected mesh points. None when
        any point lies behind the camera or the box misses the image.
    """
    uvd = camera.project(np.asarray(obj.mesh.points), theta_deg, width_px, height_px)
    if np.any(uvd[:, 2] <= 1.0):
        return None
    x0, y0 = uvd[:, 0].min(), uvd[:, 1].min()
    x1, y1 = uvd[:, 0].max(), uvd[:, 1].max()
    area = (x1 - x0) * (y1 - y0)
    cx0, cy0 = min(max(x0, 0.0), width_px), min(max(y0, 0.0), height_px)
    cx1, cy1 = min(max(x1, 0.0), width_px), min(max(y1, 0.0), height_px)
    clipped = max(cx1 - cx0, 0.0) * max(cy1 - cy0, 0.0)
    if area <= 0 or clipped <= 0:
        return None
    return [float(cx0), float(cy0), float(cx1), float(cy1)], float(clipped / area)


def frame_boxes(objects: Iterable[SceneObject], camera: CameraModel, theta_deg: float, width_px: int, height_px: int,
                min_visible_fraction: float = MIN_VISIBLE_FRACTION) -> list[dict]:
    """Ground-truth boxes of items and containers in one frame (distractors excluded).

    Returns
    -------
    list of dict
        ``{"object_id", "class", "type", "box_xyxy", "visible_fraction"}``, boxes rounded to 0.01 px.
    """
    out = []
    for obj in objects:
        if obj.cls not in ("item", "container"):
            continue
        res = object_box(obj, camera, theta_deg, width_px, height_px)
        if res is None or res[1] < min_visible_fraction:
            continue
        out.append({"object_id": obj.object_id, "class": obj.cls, "type": obj.type,
                    "box_xyxy": [round(v, 2) for v in res[0]], "visible_fraction": round(res[1], 4)})
    return out


def _check_size(width_px: int, height_px: int) -> None:
    if not (16 <= width_px <= 8192 and 16 <= height_px <= 8192):
        raise BadRequest(f"frame size must be 16..8192 pixels per side, got {width_px}x{height_px}")


def simulate_session(
    out_dir: str | Path,
    seed: int,
    n_items: int = 6,
    n_item_types: int = 3,
    n_containers: int = 2,
    item_types: Sequence[str] | None = None,
    pulse_widths: Sequence[float] = DEFAULT_PULSE_WIDTHS,
    width_px: int = 1640,
    height_px: int = 1232,
    heldout: bool = False,
    n_distractors: int = 1,
    arm_id: str = "ARM001",
    session_id: str | None = None,
    photo_effects_on: bool = True,
    contact_sheet: bool = True,
    progress: bool = True,
    renderer: SceneRenderer | None = None,
) -> Path:
    """Simulate one arm session and write its frames and ground truth.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing; receives ``<pw>.jpg`` frames, ``ground_truth.json`` and
        ``contact_sheet.png``.
    seed : int
        Everything (scene, lighting, texture, photo effects) follows from it.
    n_items, n_item_types, n_containers : int
        Scene content; each of the ``n_item_types`` types gets at least one item.
    item_types : sequence of str, optional
        Type of every item (overrides ``n_items`` / ``n_item_types``).
    pulse_widths : sequence of float
        Base pulse widths (µs) of the frames; ``theta_p = ArmConstants.theta_of_pw(pw)``.
    width_px, height_px : int
        Frame size; intrinsics scale with it (docs/design.rst).
    heldout : bool
        Draw item types and table textures from the held-out split.
    n_distractors : int
        Objects that are neither items nor containers.
    arm_id, session_id : str
        Recorded in the ground truth; ``session_id`` defaults to ``sim_<seed>``.
    photo_effects_on : bool
        Exposure, blur, noise and random JPEG quality (off: clean renders, quality 95).
    contact_sheet : bool
    progress : bool
        Show a tqdm bar.
    renderer : SceneRenderer, optional
        Reuse an existing renderer of the same frame size.

    Returns
    -------
    Path
        The ``ground_truth.json`` written.

    Raises
    ------
    BadRequest
        On an unknown type, impossible counts, an empty pulse width list or a bad frame size.
    """
    _check_size(width_px, height_px)
    if not len(pulse_widths):
        raise BadRequest("pulse_widths must not be empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool, textures = split_pools(heldout)
    types = list(item_types) if item_types is not None else choose_item_types(rng, n_items, n_item_types, pool)
    scene = generate_scene(rng, types, n_containers, n_distractors=n_distractors, textures=textures)
    constants = ArmConstants.reference(arm_id=arm_id, calibrated=True)
    camera = constants.camera
    own = renderer is None
    renderer = renderer or SceneRenderer(width_px, height_px, camera)
    if (renderer.width_px, renderer.height_px) != (width_px, height_px):
        raise BadRequest(f"renderer renders {renderer.width_px}x{renderer.height_px}, session asks {width_px}x{height_px}")
    frames = []
    try:
        renderer.set_scene(scene)
        for pw in tqdm(list(pulse_widths), desc=f"session {seed}", unit="frame", disable=not progress):
            theta = constants.theta_of_pw(float(pw))
            image = renderer.render(theta, camera)
            frame_rng = np.random.default_rng([seed, int(round(float(pw) * 1000))])
            params = PhotoParams.random(frame_rng) if photo_effects_on else PhotoParams(jpeg_quality=95)
            if photo_effects_on:
                image = photo_effects(image, params, frame_rng)
            name = f"{_pw_name(pw)}.jpg"
            (out / name).write_bytes(encode_jpeg(image, params.jpeg_quality))
            frames.append({"image_name": name, "pw0": float(pw), "theta_deg": round(theta, 6), "width_px": width_px, "height_px": height_px,
                           "boxes": frame_boxes(scene.objects, camera, theta, width_px, height_px)})
    finally:
        if own:
            renderer.close()
    truth = {
        "arm_id": arm_id,
        "session_id": session_id or f"sim_{seed}",
        "seed": int(seed),
        "scene_version": SCENE_VERSION,
        "split": "heldout" if heldout else "train",
        "texture": scene.texture,
        "arm_constants": constants.to_mapping(),
        "objects": [o.to_json() for o in scene.objects],
        "distractors": [o.to_json() for o in scene.distractors],
        "frames": frames,
    }
    path = out / "ground_truth.json"
    path.write_text(json.dumps(truth, indent=1))
    if contact_sheet:
        make_contact_sheet(out)
    return path


def _pw_name(pw: float) -> str:
    pw = float(pw)
    return str(int(pw)) if pw.is_integer() else f"{pw:g}"


#: Box outline colours of the contact sheet.
CLASS_COLOURS = {"item": (40, 230, 60), "container": (255, 150, 0)}


def make_contact_sheet(session_dir: str | Path, thumb_width_px: int = 410, columns: int = 5, out_path: str | Path | None = None) -> Path:
    """Draw all frames of a session with their ground-truth boxes on one PNG.

    Parameters
    ----------
    session_dir : str or Path
        Holds ``ground_truth.json`` and the frames.
    thumb_width_px : int
    columns : int
    out_path : str or Path, optional
        Default ``<session_dir>/contact_sheet.png``.

    Returns
    -------
    Path
    """
    session_dir = Path(session_dir)
    truth = json.loads((session_dir / "ground_truth.json").read_text())
    frames = truth["frames"]
    if not frames:
        raise BadRequest("session has no frames")
    w0, h0 = frames[0]["width_px"], frames[0]["height_px"]
    scale = thumb_width_px / w0
    tw, th = thumb_width_px, int(round(h0 * scale))
    rows = math.ceil(len(frames) / columns)
    sheet = Image.new("RGB", (columns * tw, rows * th), (30, 30, 30))
    for k, frame in enumerate(frames):
        thumb = Image.open(session_dir / frame["image_name"]).convert("RGB").resize((tw, th), Image.BILINEAR)
        draw = ImageDraw.Draw(thumb)
        for b in frame["boxes"]:
            x0, y0, x1, y1 = (v * scale for v in b["box_xyxy"])
            draw.rectangle([x0, y0, x1, y1], outline=CLASS_COLOURS[b["class"]], width=2)
            draw.text((x0 + 2, y0 + 1), f"{b['object_id']}:{b['type']}", fill=CLASS_COLOURS[b["class"]])
        draw.rectangle([0, 0, 92, 14], fill=(0, 0, 0))
        draw.text((3, 2), f"{frame['image_name']}", fill=(255, 255, 255))
        sheet.paste(thumb, ((k % columns) * tw, (k // columns) * th))
    path = Path(out_path) if out_path else session_dir / "contact_sheet.png"
    sheet.save(path)
    return path
