"""Detection data: COCO datasets with a class mapping, mixing by weight, augmentation, VOC -> COCO.

Training samples are prepared at the model's input scale: a frame is scaled so that it
looks as it would after the model's own resize at inference (short side
``min_size_px``, or an explicit per-dataset scale), jittered in scale, and cut into a
random crop at that scale, so small items keep the size in pixels they have at inference
while a step costs only the crop's pixels. The model then skips its resize in training
(:class:`sorterbot_cloud.detection.torchvision_detector.FrameTransform`).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch

from sorterbot_cloud.imaging import read_image_file
from sorterbot_cloud.structures import CLASS_NAMES


@dataclass(frozen=True)
class DatasetSpec:
    """One COCO dataset of a training mix.

    Parameters
    ----------
    annotations : Path
        COCO instances JSON.
    images_dir : Path
        Folder that ``file_name`` of each image is relative to.
    weight : float
        Relative sampling weight in the mix.
    scale : float or None
        Factor from the dataset's pixels to model-input pixels; None means the model's
        own inference resize (short side to ``min_size_px``).
    """

    annotations: Path
    images_dir: Path
    weight: float = 1.0
    scale: float | None = None

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        """Parse ``annotations.json:images_dir[:weight[:scale]]``.

        Raises
        ------
        ValueError
            On a malformed spec.
        """
        parts = text.split(":")
        if not 2 <= len(parts) <= 4:
            raise ValueError(f"dataset must be 'annotations.json:images_dir[:weight[:scale]]', got {text!r}")
        try:
            weight = float(parts[2]) if len(parts) > 2 and parts[2] else 1.0
            scale = float(parts[3]) if len(parts) > 3 and parts[3] else None
        except ValueError:
            raise ValueError(f"weight and scale must be numbers in {text!r}") from None
        if weight <= 0 or (scale is not None and scale <= 0):
            raise ValueError(f"weight and scale must be positive in {text!r}")
        return cls(Path(parts[0]), Path(parts[1]), weight, scale)


def parse_class_map(pairs: Sequence[str]) -> dict[str, str]:
    """Parse ``source=target`` pairs (``ESP8266=item``) into a mapping.

    Raises
    ------
    ValueError
        If a pair is malformed or a target is not one of :data:`CLASS_NAMES` or ``ignore``.
    """
    mapping = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"class map entries must look like 'source=target', got {pair!r}")
        source, target = (p.strip() for p in pair.split("=", 1))
        if target not in CLASS_NAMES and target != "ignore":
            raise ValueError(f"class map target must be one of {CLASS_NAMES} or 'ignore', got {target!r}")
        mapping[source] = target
    return mapping


@dataclass
class Record:
    """One image and its boxes.

    ``boxes_xyxy`` : ndarray of shape (N, 4), float32, pixels; ``class_ids`` : (N,) int64;
    ``object_types`` : N object type names (the simulator's annotation field ``type``, e.g.
    ``"die"``; None where a box has none), or empty when the file names no type at all;
    ``texture`` : the table texture the simulator drew the frame on (the image field
    ``texture``), None for photos.
    """

    path: Path
    image_id: int
    width_px: int
    height_px: int
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray
    object_types: tuple = ()
    texture: str | None = None


def load_coco(annotations: str | Path, images_dir: str | Path, class_map: Mapping[str, str] | None = None,
              class_names: Sequence[str] = CLASS_NAMES) -> list[Record]:
    """Read a COCO instances file into :class:`Record` objects.

    Category names are mapped by ``class_map`` (default: identity) onto ``class_names``;
    categories that map to ``ignore`` or to no known class are dropped, crowd boxes too.

    Raises
    ------
    FileNotFoundError
        If the annotations file does not exist.
    ValueError
        If no category of the file maps onto a known class.
    """
    annotations = Path(annotations)
    if not annotations.is_file():
        raise FileNotFoundError(f"COCO annotations not found: {annotations}")
    data = json.loads(annotations.read_text())
    class_map = dict(class_map or {})
    cat_to_class: dict[int, int] = {}
    for cat in data.get("categories", []):
        target = class_map.get(cat["name"], cat["name"])
        if target in class_names:
            cat_to_class[int(cat["id"])] = list(class_names).index(target)
    if not cat_to_class:
        names = [c["name"] for c in data.get("categories", [])]
        raise ValueError(f"no category of {annotations} ({names}) maps onto {tuple(class_names)}; pass a class map")
    per_image: dict[int, list] = {int(img["id"]): [] for img in data["images"]}
    for ann in data.get("annotations", []):
        if ann.get("iscrowd", 0) or int(ann["category_id"]) not in cat_to_class:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            continue
        per_image.setdefault(int(ann["image_id"]), []).append(
            ((x, y, x + w, y + h, cat_to_class[int(ann["category_id"])]), ann.get("type")))
    any_type = any(t is not None for anns in per_image.values() for _, t in anns)
    records = []
    for img in data["images"]:
        anns = per_image.get(int(img["id"]), [])
        rows = np.asarray([a for a, _ in anns], dtype=np.float32).reshape(-1, 5)
        types = tuple(None if t is None else str(t) for _, t in anns) if any_type else ()
        records.append(Record(Path(images_dir) / img["file_name"], int(img["id"]), int(img["width"]),
                              int(img["height"]), rows[:, :4].copy(), rows[:, 4].astype(np.int64), types,
                              None if img.get("texture") is None else str(img["texture"])))
    return records




@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation.

    Parameters
    ----------
    crop_px : int
        Side of the square random crop (model-input pixels); smaller frames are kept whole.
    scale_jitter : tuple of float
        Range of a log-uniform factor on the dataset's scale.
    min_visible : float
        A box cut by the crop is kept when at least this fraction of its area stays.
    hflip : float
        Probability of a horizontal flip.
    color : float
        Strength of brightness / contrast / saturation / hue jitter (0 = off).
    """

    crop_px: int = 512
    scale_jitter: tuple = (0.75, 1.33)
    min_visible: float = 0.45
    hflip: float = 0.5
    color: float = 1.0


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random brightness (±25 %), contrast (±25 %), saturation (±30 %), hue (±8°) and blur.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8, RGB

    Returns
    -------
    ndarray of shape (H, W, 3), uint8, RGB
    """
    if strength <= 0:
        return image
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-4, 4) * strength) % 180  # OpenCV hue: 2 degrees per unit
    hsv[..., 1] *= 1 + rng.uniform(-0.3, 0.3) * strength
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    contrast = 1 + rng.uniform(-0.25, 0.25) * strength
    brightness = 1 + rng.uniform(-0.25, 0.25) * strength
    mean = out.mean()
    out = ((out - mean) * contrast + mean) * brightness
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.2 * strength:
        out = cv2.GaussianBlur(out, (3, 3), 0)
    return out


def augment(image: np.ndarray, boxes_xyxy: np.ndarray, class_ids: np.ndarray, scale: float,
            config: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale, jitter, random-crop, flip and colour-jitter one sample.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8, RGB
    boxes_xyxy : ndarray of shape (N, 4), float32, pixels of ``image``
    class_ids : ndarray of shape (N,), int64
    scale : float
        Factor from ``image`` pixels to model-input pixels before jitter.

    Returns
    -------
    image : ndarray of shape (h, w, 3), uint8, at most ``crop_px`` a side
    boxes_xyxy : ndarray of shape (M, 4), float32, pixels of the returned image
    class_ids : ndarray of shape (M,), int64
    """
    lo, hi = config.scale_jitter
    s = scale * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    h, w = image.shape[:2]
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    boxes = boxes_xyxy.astype(np.float32) * np.float32([nw / w, nh / h, nw / w, nh / h])
    cw, ch = min(config.crop_px, nw), min(config.crop_px, nh)
    x0 = int(rng.integers(0, nw - cw + 1))
    y0 = int(rng.integers(0, nh - ch + 1))
    image = image[y0:y0 + ch, x0:x0 + cw]
    if len(boxes):
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        clipped = boxes - np.float32([x0, y0, x0, y0])
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, cw)
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, ch)
        cw_ = clipped[:, 2] - clipped[:, 0]
        ch_ = clipped[:, 3] - clipped[:, 1]
        keep = (cw_ >= 2) & (ch_ >= 2) & (cw_ * ch_ >= config.min_visible * np.maximum(area, 1e-6))
        boxes, class_ids = clipped[keep], class_ids[keep]
    if rng.random() < config.hflip:
        image = image[:, ::-1]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = cw - boxes[:, [2, 0]]
    image = color_jitter(np.ascontiguousarray(image), rng, config.color)
    return image, boxes.reshape(-1, 4).astype(np.float32), class_ids.astype(np.int64)


class MixedSampler:
    """Draws augmented training samples from several datasets by weight.

    Parameters
    ----------
    datasets : sequence of (DatasetSpec, list of Record)
    min_size_px : int
        The model's inference short side (used when a spec has no scale).
    augment_config : AugmentConfig
    seed : int
    """

    def __init__(self, datasets: Sequence[tuple[DatasetSpec, list[Record]]], min_size_px: int,
                 augment_config: AugmentConfig, seed: int = 0) -> None:
        self.datasets = [(spec, recs) for spec, recs in datasets if recs]
        if not self.datasets:
            raise ValueError("no training images in the given datasets")
        weights = np.asarray([spec.weight for spec, _ in self.datasets], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.min_size_px = min_size_px
        self.augment_config = augment_config
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[torch.Tensor, dict]:
        """One augmented sample as a model input: (float tensor (3, h, w) in [0, 1], target dict)."""
        k = int(self.rng.choice(len(self.datasets), p=self.probabilities))
        spec, records = self.datasets[k]
        rec = records[int(self.rng.integers(len(records)))]
        image = read_image_file(rec.path)
        scale = spec.scale if spec.scale is not None else self.min_size_px / min(image.shape[:2])
        boxes = rec.boxes_xyxy * np.float32([image.shape[1] / rec.width_px, image.shape[0] / rec.height_px] * 2)
        image, boxes, class_ids = augment(image, boxes, rec.class_ids, scale, self.augment_config, self.rng)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        target = {"boxes": torch.from_numpy(boxes).reshape(-1, 4), "labels": torch.from_numpy(class_ids + 1)}
        return tensor, target

    def batches(self, batch_size: int) -> Iterator[tuple[list, list]]:
        """Endless stream of (images, targets) lists of ``batch_size``."""
        while True:
            samples = [self.sample() for _ in range(batch_size)]
            yield [s[0] for s in samples], [s[1] for s in samples]


def voc_to_coco(xml_dir: str | Path, out_json: str | Path, class_map: Mapping[str, str] | None = None,
                default_class: str | None = "item") -> dict:
    """Convert a folder of Pascal VOC ``.xml`` files (labelImg) to one COCO instances file.

    Every object's ``name`` is mapped by ``class_map``; names not in it go to
    ``default_class`` (None: dropped). VOC boxes are 1-based inclusive pixel indices;
    they are written as COCO ``[x, y, w, h]`` with ``x = xmin - 1``, ``w = xmax - xmin + 1``.
    ``file_name`` is the xml's basename with the image's extension found beside it.

    Parameters
    ----------
    xml_dir : path
        Folder with ``<name>.xml`` and ``<name>.jpg`` (or .png) pairs.
    out_json : path
        Output file.
    class_map : mapping, optional
        VOC name -> one of :data:`CLASS_NAMES` or ``ignore``.
    default_class : str or None

    Returns
    -------
    dict
        The COCO dict written (categories ``item`` id 1 and ``container`` id 2, as the
        simulator's).

    Raises
    ------
    FileNotFoundError
        If ``xml_dir`` holds no xml file.
    ValueError
        If an xml file is malformed.
    """
    xml_dir = Path(xml_dir)
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise FileNotFoundError(f"no Pascal VOC .xml file in {xml_dir}")
    class_map = dict(class_map or {})
    categories = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(CLASS_NAMES)]
    images, annotations = [], []
    for image_id, xml_path in enumerate(files, start=1):
        try:
            root = ET.parse(xml_path).getroot()
            size = root.find("size")
            width, height = int(size.findtext("width")), int(size.findtext("height"))
        except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed Pascal VOC file {xml_path}: {exc}") from exc
        candidates = [p for p in (xml_path.with_suffix(e) for e in (".jpg", ".jpeg", ".png", ".JPG")) if p.exists()]
        file_name = candidates[0].name if candidates else (root.findtext("filename") or xml_path.stem + ".jpg")
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in root.iter("object"):
            name = obj.findtext("name", "").strip()
            target = class_map.get(name, default_class)
            if target is None or target == "ignore":
                continue
            if target not in CLASS_NAMES:
                raise ValueError(f"class map target must be one of {CLASS_NAMES}, got {target!r}")
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            x, y, w, h = x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": CLASS_NAMES.index(target) + 1,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "source_name": name,
            })
    coco = {"images": images, "annotations": annotations, "categories": categories,
            "info": {"description": f"converted from Pascal VOC in {xml_dir}"}}
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(coco))
    return coco


def merge_coco(specs: Sequence[str | DatasetSpec], out_json: str | Path) -> dict:
    """Merge COCO files into one, with image and annotation ids renumbered.

    ``file_name`` of each image becomes relative to ``out_json``'s folder, so the merged
    file is read with ``images_dir`` = that folder. Categories are matched by name.

    Parameters
    ----------
    specs : sequence of str or DatasetSpec
        ``annotations.json:images_dir`` of each part.
    out_json : path

    Returns
    -------
    dict
        The merged COCO dict.

    Raises
    ------
    FileNotFoundError
        If a part's annotations file is missing.
    """
    import os

    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    images, annotations, categories = [], [], []
    names: dict[str, int] = {}
    for spec in specs:
        spec = DatasetSpec.parse(spec) if isinstance(spec, str) else spec
        if not spec.annotations.is_file():
            raise FileNotFoundError(f"COCO annotations not found: {spec.annotations}")
        data = json.loads(spec.annotations.read_text())
        cat_ids = {}
        for cat in data.get("categories", []):
            if cat["name"] not in names:
                names[cat["name"]] = len(names) + 1
                categories.append({**cat, "id": names[cat["name"]]})
            cat_ids[cat["id"]] = names[cat["name"]]
        image_ids = {}
        for img in data["images"]:
            image_ids[img["id"]] = len(images) + 1
            path = (spec.images_dir / img["file_name"]).resolve()
            images.append({**img, "id": len(images) + 1,
                           "file_name": os.path.relpath(path, out_json.parent.resolve())})
        for ann in data.get("annotations", []):
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": image_ids[ann["image_id"]],
                                "category_id": cat_ids[ann["category_id"]]})
    merged = {"images": images, "annotations": annotations, "categories": categories,
              "info": {"description": "merged: " + ", ".join(str(s) for s in specs)}}
    out_json.write_text(json.dumps(merged))
    return merged
