"""Label the gripper_camera frames (shared/realdata/gripper_camera) as Pascal VOC, for adapt-detector checks.

The frames show dark blue-black blocks on a pale table under even room light, so a block is
every dark connected region: HSV value below VALUE_MAX after a small opening, at least
MIN_AREA_FRAC of the frame. The boxes were then checked by eye on contact sheets
(``--sheet``): every block was boxed, once; the two frames where the operator's hand
was in view (its dark parts boxed as blocks) are left out (EXCLUDE). Writes one .xml per frame into OUT (default: beside this script).

Usage: .venv/bin/python recipes/detection/label_gripper_camera.py [--sheet DIR]
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FRAMES = ROOT.parent / "shared" / "realdata" / "gripper_camera" / "Dataset"
OUT = Path(__file__).resolve().parent / "gripper_camera_voc"
#: HSV value (0-255) below which a pixel belongs to a block; the table reads about 200.
VALUE_MAX = 90
#: Smallest block, as a fraction of the frame's area.
MIN_AREA_FRAC = 0.002
#: Frames left out after the visual check (file stems).
EXCLUDE: set[str] = {"WIN_20220131_21_40_13_Pro", "WIN_20220131_21_43_22_Pro"}  # a hand in the frame


def block_boxes(image_bgr: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (xmin, ymin, xmax, ymax), 1-based inclusive as in VOC, of the dark blocks."""
    v = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV)[..., 2]
    mask = (cv2.GaussianBlur(v, (5, 5), 0) < VALUE_MAX).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    h, w = mask.shape
    boxes = []
    for x, y, bw, bh, area in stats[1:]:
        if area >= MIN_AREA_FRAC * h * w:
            boxes.append((int(x) + 1, int(y) + 1, int(x + bw), int(y + bh)))
    return boxes


def write_voc(path: Path, image_name: str, width: int, height: int, boxes) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image_name
    size = ET.SubElement(root, "size")
    for k, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    for x0, y0, x1, y1 in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = "block"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for k, v in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, k).text = str(v)
    ET.indent(root)
    ET.ElementTree(root).write(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--sheet", type=Path, default=None, help="Also write contact sheets with the boxes here.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tiles = []
    for path in sorted(FRAMES.rglob("*.jpg")):
        if path.stem in EXCLUDE:
            continue
        image = cv2.imread(str(path))
        boxes = block_boxes(image)
        name = f"{path.parent.name}_{path.stem}"
        write_voc(args.out / f"{name}.xml", f"{name}.jpg", image.shape[1], image.shape[0], boxes)
        if args.sheet:
            for x0, y0, x1, y1 in boxes:
                cv2.rectangle(image, (x0, y0), (x1, y1), (0, 0, 255), 4)
            tile = cv2.resize(image, (320, 180))
            cv2.putText(tile, name[-18:], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 128, 0), 1)
            tiles.append(tile)
    if args.sheet:
        args.sheet.mkdir(parents=True, exist_ok=True)
        for k in range(0, len(tiles), 20):
            part = tiles[k:k + 20] + [np.zeros_like(tiles[0])] * (20 - len(tiles[k:k + 20]))
            sheet = np.vstack([np.hstack(part[r * 4:(r + 1) * 4]) for r in range(5)])
            cv2.imwrite(str(args.sheet / f"sheet_{k // 20}.png"), sheet)


if __name__ == "__main__":
    main()
