"""A tiny synthetic COCO dataset drawn with OpenCV, for tests and smoke runs of the training code.

Each image is a textured grey "table" with a few small filled discs and rectangles
(``item``) and one or two large hollow rectangles (``container``). It is not a
substitute for the simulator's renders; it only exercises the training and evaluation
code paths quickly.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from sorterbot_cloud.structures import CLASS_NAMES


def draw_toy_image(rng: np.random.Generator, width_px: int = 160, height_px: int = 120,
                   n_items: int = 3, n_containers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one toy scene.

    Returns
    -------
    image : ndarray of shape (height_px, width_px, 3), uint8, RGB
    boxes_xyxy : ndarray of shape (N, 4), float32, pixels
    class_ids : ndarray of shape (N,), int64 (0 item, 1 container)
    """
    base = rng.integers(90, 160)
    image = np.clip(rng.normal(base, 8, (height_px, width_px, 3)), 0, 255).astype(np.uint8)
    boxes, classes = [], []
    for _ in range(n_containers):
        w = int(rng.integers(width_px // 3, width_px // 2))
        h = int(rng.integers(height_px // 3, height_px // 2))
        x0 = int(rng.integers(0, width_px - w))
        y0 = int(rng.integers(0, height_px - h))
        color = tuple(int(v) for v in rng.integers(0, 80, 3))
        cv2.rectangle(image, (x0, y0), (x0 + w - 1, y0 + h - 1), color, thickness=max(2, w // 12))
        boxes.append((x0, y0, x0 + w, y0 + h))
        classes.append(1)
    for _ in range(n_items):
        r = int(rng.integers(5, 10))
        cx = int(rng.integers(r, width_px - r))
        cy = int(rng.integers(r, height_px - r))
        color = tuple(int(v) for v in rng.integers(180, 256, 3))
        cv2.circle(image, (cx, cy), r, color, thickness=-1)
        boxes.append((cx - r, cy - r, cx + r + 1, cy + r + 1))
        classes.append(0)
    return image, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


def write_toy_coco(out_dir: str | Path, n_images: int = 8, seed: int = 0, width_px: int = 160,
                   height_px: int = 120) -> Path:
    """Write ``n_images`` toy scenes as PNGs plus ``annotations.json`` (categories item 1, container 2).

    Returns
    -------
    Path
        The annotations file; images lie beside it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n_images):
        image, boxes, classes = draw_toy_image(rng, width_px, height_px)
        name = f"toy_{i:04d}.png"
        cv2.imwrite(str(out_dir / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        images.append({"id": i + 1, "file_name": name, "width": width_px, "height": height_px})
        for box, c in zip(boxes, classes, strict=False):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                                "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]
    path = out_dir / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
