"""Item crop datasets: folders of crops per type, and the real microcontroller photos."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

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


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Raises
    ------
    ValueError
        If the file cannot be decoded.
    """
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


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
        crops.extend(read_rgb(p) for p in files)
        ids.extend([type_id] * len(files))
    if not crops:
        raise FileNotFoundError(f"no crops under {root}")
    return CropSet(crops, np.asarray(ids, np.int64), names)


def _natural_key(path: Path):
    stem = path.stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def load_voc_crops(root: str | Path, margin: float = DEFAULT_MARGIN) -> CropSet:
    """Crop every ground-truth box of a Pascal VOC photo folder.

    Reads every ``*.xml`` under ``root`` (recursively) with its image (same stem, or the
    XML's ``filename``), and crops each ``object``'s ``bndbox`` with
    :func:`~vectorizer.crops.crop_items` (VOC boxes are 1-based inclusive pixel indices;
    ``xmin - 1, ymin - 1, xmax, ymax`` gives the 0-based XYXY box).

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
    root = Path(root)
    crops, labels = [], []
    for xml_path in sorted(root.rglob("*.xml")):
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
        if boxes:
            crops.extend(crop_items(read_rgb(image_path), np.asarray(boxes), margin=margin))
            labels.extend(names)
    if not crops:
        raise FileNotFoundError(f"no Pascal VOC annotated photos under {root}")
    type_names = sorted(set(labels))
    return CropSet(crops, np.asarray([type_names.index(n) for n in labels], np.int64), type_names)
