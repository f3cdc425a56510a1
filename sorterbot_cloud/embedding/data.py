"""Item crop datasets: folders of crops per type, and the real microcontroller photos."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sorterbot_cloud.evaluation import fold_indices
from sorterbot_cloud.imaging import read_image_file

from .crops import DEFAULT_MARGIN, crop_items

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class CropSet:
    """Item crops with their true type.

    Parameters
    ----------
    crops : list of ndarray of shape (h_i, w_i, 3), uint8, RGB
    type_ids : ndarray of shape (N,), int64
        Index into ``type_names``.
    type_names : list of str
    """

    crops: list[np.ndarray]
    type_ids: np.ndarray
    type_names: list[str]

    def __len__(self) -> int:
        return len(self.crops)




def load_crop_folder(root: str | Path, types: list[str] | None = None) -> CropSet:
    """Load crops laid out as ``<root>/<type>/<i>.png`` (the simulator's ``export_item_crops``).

    Parameters
    ----------
    root : path
    types : list of str, optional
        Type folders to read, in this order; default all sub-folders, sorted by name.

    Raises
    ------
    FileNotFoundError
        If ``root`` or a requested type folder does not exist, or no crop is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"crop folder {root} does not exist")
    names = list(types) if types is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    crops, ids = [], []
    for type_id, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder} for type {name!r}")
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        crops.extend(read_image_file(p) for p in files)
        ids.extend([type_id] * len(files))
    if not crops:
        raise FileNotFoundError(f"no crops under {root}")
    return CropSet(crops, np.asarray(ids, np.int64), names)


def _natural_key(path: Path):
    stem = path.stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def voc_photos(root: str | Path):
    """Labelled photos of a Pascal VOC folder, one at a time.

    Reads every ``*.xml`` under ``root`` (recursively, sorted) with its image (same stem,
    or the XML's ``filename``); photos whose image is missing are skipped. VOC boxes are
    1-based inclusive pixel indices; ``xmin - 1, ymin - 1, xmax, ymax`` gives the 0-based
    XYXY box.

    Yields
    ------
    image_path : Path
    boxes_xyxy : ndarray of shape (N, 4), float64, pixels
    names : list of str
        The ``name`` of each ``object`` (its kind).
    """
    for xml_path in sorted(Path(root).rglob("*.xml")):
        tree = ET.parse(xml_path).getroot()
        image_path = next((xml_path.with_suffix(s) for s in (".jpg", ".jpeg", ".png", ".JPG") if xml_path.with_suffix(s).is_file()), None)
        if image_path is None:
            image_path = xml_path.parent / (tree.findtext("filename") or "")
        if not image_path.is_file():
            continue
        boxes, names = [], []
        for obj in tree.iter("object"):
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((x0 - 1, y0 - 1, x1, y1))
            names.append(obj.findtext("name").strip())
        yield image_path, np.asarray(boxes, np.float64).reshape(-1, 4), names


def voc_photo_fold(root: str | Path, folds: int | None = None, fold: int = 0, part: str = "test", seed: int = 0) -> list:
    """The labelled photos of a Pascal VOC folder, or one part of a k-fold split of them by photo.

    Photos (:func:`voc_photos`, with at least one box) are split with
    :func:`sorterbot_cloud.evaluation.fold_indices` over their sorted order, so that
    ``crops-from-voc`` (training crops) and ``evaluate-real-grouping`` (scores) given the
    same ``folds``, ``fold`` and ``seed`` see complementary photos: no crop of a scored
    photo is trained on.

    Parameters
    ----------
    root : path
        Pascal VOC folder.
    folds : int, optional
        Number of parts (2 .. number of photos); None: every photo.
    fold : int
        Which part, ``0 .. folds-1``.
    part : {"test", "train"}
        ``"test"``: the photos of part ``fold``; ``"train"``: all the others.
    seed : int
        Seed of the split.

    Returns
    -------
    list of (Path, ndarray of shape (N, 4), list of str)
        ``(image_path, boxes_xyxy, names)`` as :func:`voc_photos` yields them.

    Raises
    ------
    FileNotFoundError
        If ``root`` holds no labelled photo.
    ValueError
        If ``fold`` or ``part`` is out of range, or ``folds`` does not fit the photo count.
    """
    photos = [p for p in voc_photos(root) if p[2]]
    if not photos:
        raise FileNotFoundError(f"no Pascal VOC labelled photos under {root}")
    if folds is None:
        return photos
    if part not in ("test", "train"):
        raise ValueError(f"part must be 'test' or 'train', got {part!r}")
    parts = fold_indices(len(photos), int(folds), seed)
    if not 0 <= int(fold) < len(parts):
        raise ValueError(f"fold must be in 0..{len(parts) - 1}, got {fold}")
    chosen = set(parts[int(fold)].tolist())
    return [p for i, p in enumerate(photos) if (i in chosen) == (part == "test")]


def export_crops_from_voc(photos, out_dir: str | Path, prefix: str = "", margin: float = DEFAULT_MARGIN) -> dict[str, int]:
    """Cut labelled photos' boxes into embedder training crop folders, one per kind.

    Writes ``<out_dir>/<prefix><name>/<i>.png`` (the layout of :func:`load_crop_folder`
    and ``train-embedder --train-dir``), cut like the service cuts them
    (:func:`~sorterbot_cloud.embedding.crops.crop_items`), and ``index.json`` naming the photo of each crop.

    Parameters
    ----------
    photos : sequence of (path, ndarray of shape (N, 4), list of str)
        From :func:`voc_photo_fold` or :func:`voc_photos`; boxes in pixels, XYXY.
    out_dir : path
        Created if missing; existing crops of the same names are overwritten.
    prefix : str
        Put before each kind's folder name (e.g. ``"mc_"``), so kinds of several sets can share one
        training folder without colliding.
    margin : float
        Context margin passed to ``crop_items``.

    Returns
    -------
    dict of str to int
        Crops written per folder name.

    Raises
    ------
    ValueError
        If a kind's name would not be a plain folder name.
    """
    out = Path(out_dir)
    counts: dict[str, int] = defaultdict(int)
    index = []
    for image_path, boxes, names in photos:
        if not names:
            continue
        for name, crop in zip(names, crop_items(read_image_file(image_path), boxes, margin=margin), strict=True):
            folder = f"{prefix}{name}"
            if not folder or "/" in folder or folder in (".", ".."):
                raise ValueError(f"kind {name!r} of {image_path} is not a folder name")
            (out / folder).mkdir(parents=True, exist_ok=True)
            path = out / folder / f"{counts[folder]}.png"
            cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            index.append({"crop": str(path.relative_to(out)), "photo": str(image_path)})
            counts[folder] += 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").write_text(json.dumps({"crops": index}, indent=1) + "\n")
    return dict(counts)


def load_voc_crops(root: str | Path, margin: float = DEFAULT_MARGIN) -> CropSet:
    """Crop every ground-truth box of a Pascal VOC photo folder (:func:`voc_photos`).

    Each ``object``'s box is cropped with :func:`~sorterbot_cloud.embedding.crops.crop_items`.

    Parameters
    ----------
    root : path
        For example ``../shared/realdata/microcontrollers`` (149 photos, 4 board types).
    margin : float
        Context margin passed to ``crop_items``.

    Raises
    ------
    FileNotFoundError
        If ``root`` holds no annotated photo.
    """
    crops, labels = [], []
    for image_path, boxes, names in voc_photo_fold(root):
        crops.extend(crop_items(read_image_file(image_path), boxes, margin=margin))
        labels.extend(names)
    type_names = sorted(set(labels))
    return CropSet(crops, np.asarray([type_names.index(n) for n in labels], np.int64), type_names)


def export_crops_from_coco(
    annotations: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    category_name: str = "item",
    min_visible_fraction: float = 0.95,
    min_side_px: int = 12,
    margin: float = DEFAULT_MARGIN,
    max_per_type: int | None = None,
    exclude_types: tuple[str, ...] = (),
    start_counts: dict[str, int] | None = None,
) -> dict[str, int]:
    """Cut the typed boxes of a COCO detection dataset into crop folders per type.

    A COCO dataset rendered by the simulator (``sorterbot-cloud simulate dataset``) labels
    every annotation with its object ``type`` and ``visible_fraction``; this turns those
    frames into embedder training crops (``<out_dir>/<type>/<i>.png``, the layout of
    :func:`load_crop_folder`) at the cost of reading JPEGs instead of rendering scenes.
    Crops are cut like the service cuts them (:func:`~sorterbot_cloud.embedding.crops.crop_items`).

    Parameters
    ----------
    annotations : path
        COCO JSON whose annotations carry a ``type`` string (others are skipped).
    images_dir : path
        Folder of the images named by ``file_name``.
    out_dir : path
        Receives the crop folders and ``index.json``; existing crops are overwritten.
    category_name : str
        Only boxes of this COCO category are cut.
    min_visible_fraction : float
        Boxes whose ``visible_fraction`` (absent: 1) is below this are skipped (items cut by
        the frame border or hidden behind others).
    min_side_px : int
        Boxes narrower or lower than this many pixels are skipped.
    margin : float
        Context margin passed to ``crop_items``.
    max_per_type : int, optional
        Stop cutting a type after this many crops.
    exclude_types : tuple of str
        Types never cut (for example the simulator's held-out item types).
    start_counts : dict of str to int, optional
        Crops already in ``out_dir`` per type (from an earlier dataset): numbering continues
        after them and ``max_per_type`` counts them.

    Returns
    -------
    dict of str to int
        Crops in ``out_dir`` per type, ``start_counts`` included.

    Raises
    ------
    FileNotFoundError
        If ``annotations`` or an image it names is missing.
    ValueError
        If ``category_name`` is not a category of the dataset, or an image cannot be decoded.
    """
    coco = json.loads(Path(annotations).read_text())
    cat_ids = [c["id"] for c in coco["categories"] if c["name"] == category_name]
    if not cat_ids:
        raise ValueError(f"no category {category_name!r} in {annotations}; it has {[c['name'] for c in coco['categories']]}")
    by_image = defaultdict(list)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        if (ann["category_id"] in cat_ids and isinstance(ann.get("type"), str) and ann["type"] not in exclude_types
                and ann.get("visible_fraction", 1.0) >= min_visible_fraction and min(w, h) >= min_side_px):
            by_image[ann["image_id"]].append(ann)
    out = Path(out_dir)
    counts: dict[str, int] = defaultdict(int, start_counts or {})
    index_path = out / "index.json"
    index = json.loads(index_path.read_text())["crops"] if start_counts and index_path.is_file() else []
    for image in sorted(coco["images"], key=lambda im: im["id"]):
        anns = [a for a in by_image.get(image["id"], []) if max_per_type is None or counts[a["type"]] < max_per_type]
        if not anns:
            continue
        path = Path(images_dir) / image["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {path} named by {annotations} does not exist")
        frame = read_image_file(path)
        boxes = np.asarray([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
        for ann, crop in zip(anns, crop_items(frame, boxes, margin=margin), strict=True):
            t = ann["type"]
            if max_per_type is not None and counts[t] >= max_per_type:
                continue
            (out / t).mkdir(parents=True, exist_ok=True)
            rel = f"{t}/{counts[t]}.png"
            cv2.imwrite(str(out / rel), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            index.append({"path": rel, "type": t, "source": str(annotations), "image": image["file_name"], "annotation_id": ann["id"]})
            counts[t] += 1
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted({c["source"] for c in index})
    index_path.write_text(json.dumps({"sources": sources, "margin": margin, "min_visible_fraction": min_visible_fraction,
                                      "crops": index}, indent=1))
    return dict(counts)
