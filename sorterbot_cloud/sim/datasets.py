"""Training datasets from the simulator: COCO detection sets and item-crop sets.

Both are deterministic by seed: scene ``k`` of a dataset uses the generator seeded
with ``[seed, k]``, so the same call writes the same files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from sorterbot_cloud.camera import ArmConstants, CameraModel
from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.sim.catalog import HELDOUT_ITEM_TYPES, ITEM_TYPES, TRAIN_ITEM_TYPES, is_item_type, is_procedural
from sorterbot_cloud.sim.render import PhotoParams, SceneRenderer, encode_jpeg, photo_effects
from sorterbot_cloud.sim.scene import generate_scene
from sorterbot_cloud.sim.session import frame_boxes
from sorterbot_cloud.sim.textures import EXTRA_TRAIN_TEXTURES, HELDOUT_TEXTURES, TRAIN_TEXTURES

#: COCO categories (ids 1 and 2; the service's class ids are these minus one).
COCO_CATEGORIES = [{"id": 1, "name": "item", "supercategory": "object"}, {"id": 2, "name": "container", "supercategory": "object"}]
#: Split name -> (item types, table textures). "val" draws from the training pools with other seeds.
SPLITS = {
    "train": (TRAIN_ITEM_TYPES, TRAIN_TEXTURES),
    "val": (TRAIN_ITEM_TYPES, TRAIN_TEXTURES),
    "heldout": (HELDOUT_ITEM_TYPES, HELDOUT_TEXTURES),
    "all": (tuple(ITEM_TYPES), TRAIN_TEXTURES + HELDOUT_TEXTURES),  # the fixed split's; extras only when asked
}
#: Pulse-width range (µs) of random arm poses.
PW_RANGE = (1000.0, 1950.0)


def jittered_camera(base: CameraModel, rng: np.random.Generator, height_mm: float = 15.0, pitch_deg: float = 4.0, offset_mm: float = 5.0) -> CameraModel:
    """The base camera with its mounting jittered uniformly by up to the given amounts."""
    return dataclasses.replace(
        base,
        height_mm=base.height_mm + float(rng.uniform(-height_mm, height_mm)),
        pitch_deg=base.pitch_deg + float(rng.uniform(-pitch_deg, pitch_deg)),
        offset_mm=base.offset_mm + float(rng.uniform(-offset_mm, offset_mm)),
    )


def _scene_seed_rng(seed: int, k: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(k)])


#: Scenes in a row that may fail to lay out before :func:`export_coco_dataset` gives up.
MAX_SKIPPED_SCENES = 50


def export_coco_dataset(
    out_dir: str | Path,
    n_images: int,
    seed: int,
    split: str = "train",
    width_px: int = 1024,
    height_px: int = 768,
    frames_per_scene: int = 4,
    items_range: tuple[int, int] = (2, 10),
    containers_range: tuple[int, int] = (0, 3),
    distractors_range: tuple[int, int] = (0, 3),
    camera_jitter: bool = True,
    progress: bool = True,
    procedural_types: Sequence[str] = (),
    markings_range: tuple[int, int] = (0, 0),
    extra_textures: Sequence[str] = (),
    split_textures: bool = True,
) -> Path:
    """Write a COCO detection dataset of single frames at random arm poses.

    Parameters
    ----------
    out_dir : str or Path
        Receives ``images/<id>.jpg`` and ``annotations.json``.
    n_images : int
    seed : int
    split : {"train", "val", "heldout", "all"}
        Item types and table textures to draw from (``heldout`` never overlaps ``train``).
    width_px, height_px : int
        Frame size; the reference intrinsics are scaled to it.
    frames_per_scene : int
        Frames rendered per random scene (each at a random pulse width).
    items_range, containers_range, distractors_range : (int, int)
        Inclusive ranges of counts per scene.
    camera_jitter : bool
        Jitter camera height (+-15 mm), pitch (+-4 deg) and offset (+-5 mm) per frame.
    progress : bool
    procedural_types : sequence of str
        Procedural item types (``proc_NNNN``, :func:`~sorterbot_cloud.sim.catalog.procedural_type_names`)
        drawn together with the split's catalogue types, each type equally likely: many
        shapes and colours beyond the catalogue, for models that must work on kinds they
        never saw. Never held-out types.
    markings_range : (int, int)
        Inclusive range of flat table markings per scene (rings, loops, blobs, strokes;
        :func:`~sorterbot_cloud.sim.textures.paint_table_markings`), never annotated:
        negatives for the detector. Drawn from a generator of their own, so ``(0, 0)``
        renders exactly the frames of a dataset made without markings.
    extra_textures : sequence of str
        Table textures drawn together with the split's, each equally likely: names from
        :data:`~sorterbot_cloud.sim.textures.EXTRA_TRAIN_TEXTURES` (such as ``laminate``,
        plain desks including near-white ones), for detectors that must work on tables
        they never saw. Never held-out textures, and not with the ``heldout`` split.
    split_textures : bool
        Draw the split's own textures too; False: only ``extra_textures`` (a dataset of
        those tables alone, to mix with others by weight when training).

    Returns
    -------
    Path
        ``annotations.json``: COCO with categories ``item`` (1) and ``container`` (2);
        annotations carry ``bbox`` [x, y, w, h] pixels plus ``type``, ``object_id`` and
        ``visible_fraction``; images carry ``pw0``, ``theta_deg`` and the camera used.

    Raises
    ------
    BadRequest
        If ``split`` is unknown, a count is out of range, a procedural type name is not
        one, or more than :data:`MAX_SKIPPED_SCENES` scenes in a row cannot be laid out (a scene whose
        objects do not fit on the table without overlap is skipped for the next seed).
    """
    if split not in SPLITS:
        raise BadRequest(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if n_images < 0 or frames_per_scene < 1:
        raise BadRequest("n_images must be >= 0 and frames_per_scene >= 1")
    for name, (low, high) in (("items_range", items_range), ("containers_range", containers_range), ("distractors_range", distractors_range),
                              ("markings_range", markings_range)):
        if not 0 <= int(low) <= int(high):
            raise BadRequest(f"{name} must be (min, max) with 0 <= min <= max, got ({low}, {high})")
    bad = [t for t in procedural_types if not is_procedural(t)]
    if bad:
        raise BadRequest(f"procedural_types must be procedural type names (proc_NNNN), got {bad[:3]}")
    bad = [t for t in extra_textures if t not in EXTRA_TRAIN_TEXTURES]
    if bad or (extra_textures and split == "heldout"):
        raise BadRequest(f"extra_textures must be names from {list(EXTRA_TRAIN_TEXTURES)} and the split not 'heldout', "
                         f"got {list(extra_textures)} with split {split!r}")
    if not split_textures and not extra_textures:
        raise BadRequest("split_textures=False needs extra_textures: there would be no table to draw")
    pool, textures = SPLITS[split]
    pool = tuple(pool) + tuple(procedural_types)
    textures = (tuple(textures) if split_textures else ()) + tuple(dict.fromkeys(extra_textures))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    base = CameraModel.reference()
    constants = ArmConstants.reference()
    images, annotations = [], []
    renderer = SceneRenderer(width_px, height_px, base)
    bar = tqdm(total=n_images, desc=f"coco {split}", unit="img", disable=not progress)
    try:
        k, skipped = 0, 0
        while len(images) < n_images:
            rng = _scene_seed_rng(seed, k)
            n_items = int(rng.integers(items_range[0], items_range[1] + 1))
            types = [str(t) for t in rng.choice(list(pool), size=n_items)]
            try:
                scene = generate_scene(rng, types, int(rng.integers(containers_range[0], containers_range[1] + 1)),
                                       n_distractors=int(rng.integers(distractors_range[0], distractors_range[1] + 1)), textures=textures)
            except BadRequest:  # this draw cannot be laid out on the table: take the next scene seed
                skipped += 1
                if skipped > MAX_SKIPPED_SCENES:
                    raise BadRequest(f"{skipped} scenes in a row could not be laid out; use fewer objects per scene") from None
                k += 1
                continue
            skipped = 0
            if markings_range[1] > 0:
                scene.table_markings = int(np.random.default_rng([seed, k, 7]).integers(markings_range[0], markings_range[1] + 1))
            renderer.set_scene(scene)
            for _ in range(min(frames_per_scene, n_images - len(images))):
                pw = float(rng.uniform(*PW_RANGE))
                theta = constants.theta_of_pw(pw)
                camera = jittered_camera(base, rng) if camera_jitter else base
                image = renderer.render(theta, camera)
                params = PhotoParams.random(rng)
                image = photo_effects(image, params, rng)
                image_id = len(images) + 1
                name = f"{image_id:06d}.jpg"
                (out / "images" / name).write_bytes(encode_jpeg(image, params.jpeg_quality))
                images.append({"id": image_id, "file_name": name, "width": width_px, "height": height_px, "pw0": round(pw, 3),
                               "theta_deg": round(theta, 6), "scene": k, "texture": scene.texture, "camera": dataclasses.asdict(camera)})
                for b in frame_boxes(scene.objects, camera, theta, width_px, height_px):
                    x0, y0, x1, y1 = b["box_xyxy"]
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1 if b["class"] == "item" else 2,
                                        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)], "area": round((x1 - x0) * (y1 - y0), 2),
                                        "iscrowd": 0, "type": b["type"], "object_id": b["object_id"], "visible_fraction": b["visible_fraction"]})
                bar.update(1)
            k += 1
    finally:
        bar.close()
        renderer.close()
    coco = {"info": {"description": f"SorterBot simulator, split {split}, seed {seed}", "version": "1"}, "licenses": [],
            "images": images, "annotations": annotations, "categories": COCO_CATEGORIES}
    path = out / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


#: :func:`export_item_crops` draws another scene when one cannot be laid out (items that do
#: not fit on the table together); after this many such draws it gives up.
MAX_SKIPPED_CROP_SCENES = 1000


def export_item_crops(
    out_dir: str | Path,
    n_per_type: int,
    seed: int,
    types: Sequence[str] = tuple(ITEM_TYPES),
    width_px: int = 1640,
    height_px: int = 1232,
    margin: float = 0.1,
    items_per_scene: int = 8,
    min_visible_fraction: float = 0.95,
    progress: bool = True,
) -> Path:
    """Write item crops per type, cut from rendered frames (ground-truth box plus a margin).

    Parameters
    ----------
    out_dir : str or Path
        Receives ``<type>/<i>.png`` and ``index.json``.
    n_per_type : int
    seed : int
    types : sequence of str
        Item types to crop (default: all catalogue types, train and held-out), catalogue
        names or procedural ones (``proc_NNNN``, :func:`~sorterbot_cloud.sim.catalog.procedural_item_type`,
        training types). Textures follow the types: held-out textures only for scenes of
        held-out types.
    width_px, height_px : int
        Frame size crops are cut from (the service crops from 1640x1232 frames).
    margin : float
        Box grown by this fraction of its width/height on each side, clipped to the image.
    items_per_scene : int
    min_visible_fraction : float
        Items cut by the frame border more than this are not cropped.

    Returns
    -------
    Path
        ``index.json``: ``{"types", "train_types", "heldout_types", "crops": [{"path", "type",
        "split", "scene", "pw0", "box_xyxy"}]}``.

    Raises
    ------
    BadRequest
        On an unknown type or ``n_per_type < 1``, or when more than
        :data:`MAX_SKIPPED_CROP_SCENES` drawn scenes could not be laid out.
    """
    types = [str(t) for t in types]
    for t in types:
        if not is_item_type(t):
            raise BadRequest(f"unknown item type {t!r}; expected one of {sorted(ITEM_TYPES)} or proc_NNNN")
    if n_per_type < 1 or not types:
        raise BadRequest("n_per_type must be >= 1 and types non-empty")
    out = Path(out_dir)
    for t in types:
        (out / t).mkdir(parents=True, exist_ok=True)
    counts = {t: 0 for t in types}
    crops = []
    base = CameraModel.reference()
    constants = ArmConstants.reference()
    renderer = SceneRenderer(width_px, height_px, base)
    bar = tqdm(total=n_per_type * len(types), desc="crops", unit="crop", disable=not progress)
    try:
        k = skipped = 0
        while any(c < n_per_type for c in counts.values()):
            rng = _scene_seed_rng(seed, k)
            needed = [t for t in types if counts[t] < n_per_type]
            heldout = [t for t in needed if t in HELDOUT_ITEM_TYPES]
            train = [t for t in needed if t not in HELDOUT_ITEM_TYPES]
            group = train if train and (not heldout or k % 2 == 0) else heldout
            textures = TRAIN_TEXTURES if group is train else HELDOUT_TEXTURES
            scene_types = [str(t) for t in rng.choice(group, size=items_per_scene)]
            try:
                scene = generate_scene(rng, scene_types, int(rng.integers(0, 3)), n_distractors=int(rng.integers(0, 2)),
                                       textures=textures)
            except BadRequest:  # large items drawn together may not fit on the table: draw the next scene
                k += 1
                skipped += 1
                if skipped > MAX_SKIPPED_CROP_SCENES:
                    raise
                continue
            renderer.set_scene(scene)
            for _ in range(2):
                pw = float(rng.uniform(*PW_RANGE))
                theta = constants.theta_of_pw(pw)
                camera = jittered_camera(base, rng)
                image = photo_effects(renderer.render(theta, camera), PhotoParams.random(rng), rng)
                for b in frame_boxes(scene.items, camera, theta, width_px, height_px, min_visible_fraction):
                    t = b["type"]
                    if counts[t] >= n_per_type:
                        continue
                    x0, y0, x1, y1 = b["box_xyxy"]
                    mw, mh = (x1 - x0) * margin, (y1 - y0) * margin
                    box = [max(0, int(np.floor(x0 - mw))), max(0, int(np.floor(y0 - mh))),
                           min(width_px, int(np.ceil(x1 + mw))), min(height_px, int(np.ceil(y1 + mh)))]
                    crop = image[box[1]:box[3], box[0]:box[2]]
                    if crop.shape[0] < 4 or crop.shape[1] < 4:
                        continue
                    rel = f"{t}/{counts[t]}.png"
                    Image.fromarray(crop).save(out / rel)
                    crops.append({"path": rel, "type": t, "split": "heldout" if t in HELDOUT_ITEM_TYPES else "train", "scene": k,
                                  "pw0": round(pw, 3), "box_xyxy": box})
                    counts[t] += 1
                    bar.update(1)
            k += 1
    finally:
        bar.close()
        renderer.close()
    index = {"seed": int(seed), "types": types, "train_types": [t for t in types if t in TRAIN_ITEM_TYPES or is_procedural(t)],
             "heldout_types": [t for t in types if t in HELDOUT_ITEM_TYPES], "margin": margin, "crops": crops}
    path = out / "index.json"
    path.write_text(json.dumps(index, indent=1))
    return path
