"""Cut, paste and learn: domain-randomised 2D training frames for the detector.

After Dwibedi, Misra and Hebert, "Cut, Paste and Learn: Surprisingly Easy Synthesis for
Instance Detection" (ICCV 2017): object cut-outs are pasted onto many backgrounds with
several blending modes, so that the detector learns the objects and not the seams. Here:

- cut-outs: item boxes of labelled real frames (the train splits only), segmented inside
  their box by OpenCV's GrabCut (a box is only a rectangle; the mask keeps the pasted
  patch from carrying its own table along), and procedural items drawn on the fly (plain
  single-colour cuboids, dominoes with pips, cylinders, discs, flat printed cards and
  stickers, irregular polygons);
- backgrounds: procedural table families (speckle and granite noise, wood grain, woven
  cloth, marble veins, checker and grid paper, plain desks with a light gradient, the
  simulator's training textures) and real ones (the regions of labelled real frames
  outside their boxes; low-passed frames of an unlabelled table, where small items
  vanish and only the table's colour and light stay);
- photometry: light colour temperature, exposure, a light gradient, soft shadows under
  the items, sensor noise, blur, JPEG quality.

Every pasted item is annotated as class ``item`` with the box of its visible mask; items
hidden by more than half are dropped from the annotations and kept in the picture (a
detector should not find them, and a heavily hidden item is a fair negative).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from sorterbot_cloud.detection.data import Record
from sorterbot_cloud.imaging import read_image_file

#: Procedural background families drawn by :func:`random_background`.
BACKGROUND_FAMILIES: tuple[str, ...] = (
    "speckle", "granite", "wood", "woven", "marble", "checker", "grid_paper", "plain", "sim_texture",
    "real_photo", "real_table",
)

#: Procedural item shapes drawn by :func:`procedural_item`.
ITEM_SHAPES: tuple[str, ...] = ("cuboid", "domino", "cylinder", "disc", "card", "polygon")

#: Frame sizes (width, height) in pixels, from arm cameras to phone photos in both orientations.
FRAME_SIZES_PX: tuple[tuple[int, int], ...] = (
    (640, 480), (800, 600), (1024, 768), (1280, 720), (960, 540), (378, 504), (600, 800), (1640, 1232),
)


@dataclass
class Cutout:
    """One item to paste: colour and opacity.

    Attributes
    ----------
    rgb : ndarray of shape (H, W, 3), uint8
    alpha : ndarray of shape (H, W), float32 in [0, 1]
    source : str
        Where it came from (an image path, or ``procedural:<shape>``).
    """

    rgb: np.ndarray
    alpha: np.ndarray
    source: str


def grabcut_cutout(image: np.ndarray, box_xyxy: Sequence[float], iterations: int = 3,
                   min_fill: float = 0.35) -> Cutout:
    """Segment the object inside one box with GrabCut and return it as a cut-out.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8, RGB
    box_xyxy : sequence of 4 float
        The object's box, pixels of ``image``.
    iterations : int
        GrabCut iterations (``cv2.grabCut``).
    min_fill : float
        When the mask covers less than this fraction of the box (GrabCut lost the object:
        low contrast with its table), the whole box is used with feathered edges instead.

    Returns
    -------
    Cutout
        Cropped to the box; ``alpha`` feathered over about 1.5 % of the box side.
    """
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box_xyxy)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        raise ValueError(f"box {list(box_xyxy)} is too small or outside the {w}x{h} image")
    pad = max(4, int(0.06 * max(x1 - x0, y1 - y0)))
    cx0, cy0, cx1, cy1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
    crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1, ::-1])  # GrabCut models colours; BGR or RGB alike
    mask = np.zeros(crop.shape[:2], np.uint8)
    rect = (x0 - cx0, y0 - cy0, x1 - x0, y1 - y0)
    fg = None
    if rect[0] > 0 or rect[1] > 0 or cx1 > x1 or cy1 > y1:  # GrabCut needs some background outside the rect
        try:
            cv2.grabCut(crop, mask, rect, np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64),
                        iterations, cv2.GC_INIT_WITH_RECT)
            fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
        except cv2.error:
            fg = None
    box_mask = np.zeros(crop.shape[:2], np.uint8)
    box_mask[rect[1]:rect[1] + rect[3], rect[0]:rect[0] + rect[2]] = 1
    if fg is not None:
        fg &= box_mask
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        if n > 1:  # keep the largest component: stray background specks are not the object
            fg = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
            # fill holes (a board's dark chips, a card's print): the object is one solid region
            contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            fg = cv2.drawContours(np.zeros_like(fg), contours, -1, 1, thickness=cv2.FILLED)
    if fg is None or fg.sum() < min_fill * box_mask.sum():
        fg = box_mask
    fg = fg[rect[1]:rect[1] + rect[3], rect[0]:rect[0] + rect[2]].astype(np.float32)
    sigma = max(0.6, 0.015 * max(fg.shape))
    alpha = np.minimum(cv2.GaussianBlur(fg, (0, 0), sigma) * 1.15, 1.0) * fg.max()
    rgb = image[y0:y1, x0:x1].copy()
    return Cutout(rgb, alpha.astype(np.float32), "")


def cutouts_from_records(records: Sequence[Record], class_id: int = 0, max_cutouts: int | None = None,
                         min_side_px: int = 24, seed: int = 0) -> list[Cutout]:
    """GrabCut cut-outs of every box of one class in labelled frames.

    Parameters
    ----------
    records : sequence of Record
        Labelled frames (:func:`sorterbot_cloud.detection.data.load_coco`); use training splits only.
    class_id : int
        0 = item.
    max_cutouts : int, optional
        Take at most this many boxes, drawn at random.
    min_side_px : int
        Boxes with a shorter side are skipped (too few pixels to paste larger).
    seed : int

    Returns
    -------
    list of Cutout
    """
    rng = np.random.default_rng(seed)
    jobs = [(rec, box) for rec in records for box, c in zip(rec.boxes_xyxy, rec.class_ids, strict=True)
            if int(c) == class_id and min(box[2] - box[0], box[3] - box[1]) >= min_side_px]
    if max_cutouts is not None and len(jobs) > max_cutouts:
        jobs = [jobs[i] for i in sorted(rng.choice(len(jobs), max_cutouts, replace=False))]
    out, cache = [], {}
    for rec, box in jobs:
        if rec.path not in cache:
            cache.clear()
            image = read_image_file(rec.path)
            sx, sy = image.shape[1] / rec.width_px, image.shape[0] / rec.height_px
            cache[rec.path] = (image, sx, sy)
        image, sx, sy = cache[rec.path]
        cut = grabcut_cutout(image, np.asarray(box) * np.float32([sx, sy, sx, sy]))
        cut.source = str(rec.path)
        out.append(cut)
    return out


# ---------------------------------------------------------------------------------------
# backgrounds


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: float, octaves: int = 3) -> np.ndarray:
    """Smooth noise, float32 (h, w) in [0, 1]; ``cells`` lattice cells across the long side."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    side = max(h, w)
    for _ in range(octaves):
        gh, gw = max(2, int(round(cells * h / side)) + 1), max(2, int(round(cells * w / side)) + 1)
        out += amp * cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
        cells *= 2
    out /= total
    return (out - out.min()) / (np.ptp(out) + 1e-6)


def _random_colour(rng: np.random.Generator, light: tuple[float, float] = (0.15, 0.95)) -> np.ndarray:
    """A random RGB colour, float32 in [0, 1], of HSV value drawn from ``light``."""
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(0, 256) * rng.random(), 255 * rng.uniform(*light)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def _real_region(rng: np.random.Generator, records: Sequence[Record], h: int, w: int) -> np.ndarray | None:
    """A region of a labelled real frame that no box touches, resized to (h, w); None if none found."""
    for _ in range(20):
        rec = records[int(rng.integers(len(records)))]
        rw, rh = rec.width_px, rec.height_px
        side_w = int(rw * rng.uniform(0.25, 0.6))
        side_h = min(rh, int(side_w * h / w))
        if side_w < 32 or side_h < 32:
            continue
        x0, y0 = int(rng.integers(0, rw - side_w + 1)), int(rng.integers(0, rh - side_h + 1))
        b = rec.boxes_xyxy
        if len(b) and np.any((b[:, 0] < x0 + side_w) & (b[:, 2] > x0) & (b[:, 1] < y0 + side_h) & (b[:, 3] > y0)):
            continue
        image = read_image_file(rec.path)
        sx, sy = image.shape[1] / rw, image.shape[0] / rh
        crop = image[int(y0 * sy):int((y0 + side_h) * sy), int(x0 * sx):int((x0 + side_w) * sx)]
        return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    return None


def random_background(rng: np.random.Generator, h: int, w: int, family: str | None = None,
                      real_records: Sequence[Record] = (), table_frames: Sequence[Path] = ()) -> tuple[np.ndarray, str]:
    """One table background.

    Parameters
    ----------
    rng : numpy.random.Generator
    h, w : int
        Size in pixels.
    family : str, optional
        One of :data:`BACKGROUND_FAMILIES`; random when None. ``real_photo`` needs
        ``real_records`` and ``real_table`` needs ``table_frames`` (else a procedural one).
    real_records : sequence of Record
        Labelled real frames whose box-free regions may serve as tables.
    table_frames : sequence of path
        Unlabelled frames of a table, used low-passed (a median filter removes what lies
        on it: items become no-object background otherwise).

    Returns
    -------
    image : ndarray of shape (h, w, 3), float32 RGB in [0, 1]
    family : str
    """
    if family is None:
        family = BACKGROUND_FAMILIES[int(rng.integers(len(BACKGROUND_FAMILIES)))]
    if family == "real_photo" and real_records:
        img = _real_region(rng, real_records, h, w)
        if img is not None:
            return img, family
        family = "speckle"
    if family == "real_table" and table_frames:
        frame = read_image_file(table_frames[int(rng.integers(len(table_frames)))])
        small = cv2.resize(frame, (160, int(160 * frame.shape[0] / frame.shape[1])), interpolation=cv2.INTER_AREA)
        small = cv2.medianBlur(small, 31)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
        grain = (_value_noise(rng, h, w, max(h, w) / 3, 1) - 0.5) * rng.uniform(0.02, 0.08)
        return np.clip(img + grain[..., None], 0, 1), family
    if family in ("real_photo", "real_table"):
        family = "granite"
    base = _random_colour(rng, (0.3, 0.97))
    if family == "speckle" or family == "granite":
        coarse = _value_noise(rng, h, w, rng.uniform(3, 12))
        img = base * (0.85 + 0.25 * coarse)[..., None]
        n_specks = int(h * w * rng.uniform(0.002, 0.03 if family == "speckle" else 0.08))
        ys, xs = rng.integers(0, h, n_specks), rng.integers(0, w, n_specks)
        colours = np.stack([_random_colour(rng, (0.05, 1.0)) for _ in range(4)])
        speck = np.zeros((h, w, 3), np.float32)
        mask = np.zeros((h, w), np.float32)
        r = 1 if family == "speckle" else int(rng.integers(1, 4))
        for k in range(4):
            sel = slice(k, None, 4)
            m = np.zeros((h, w), np.uint8)
            m[ys[sel], xs[sel]] = 1
            if r > 1:
                m = cv2.dilate(m, np.ones((r, r), np.uint8))
            speck[m > 0] = colours[k]
            mask = np.maximum(mask, m.astype(np.float32))
        mask = cv2.GaussianBlur(mask, (0, 0), 0.5)[..., None]
        img = img * (1 - mask) + speck * mask
    elif family == "wood":
        dark = base * rng.uniform(0.5, 0.75)
        warp = _value_noise(rng, h, w, rng.uniform(2, 5)) * rng.uniform(4, 12)
        yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (yy * rng.uniform(15, 45) + warp))
        img = base * (1 - grain[..., None] ** 3 * 0.6) + dark * grain[..., None] ** 3 * 0.6
        if rng.random() < 0.5:
            img = np.ascontiguousarray(np.rot90(cv2.resize(img, (h, w)))) if h != w else np.rot90(img).copy()
    elif family == "woven":
        period = rng.uniform(3, 12)
        xx = np.arange(w, dtype=np.float32)[None, :]
        yy = np.arange(h, dtype=np.float32)[:, None]
        wx, wy = np.sin(2 * np.pi * xx / period), np.sin(2 * np.pi * yy / period)
        weave = 0.5 + 0.25 * wx * np.sign(wy) + 0.25 * wy * np.sign(wx)
        img = base * (0.75 + 0.3 * weave + 0.15 * (_value_noise(rng, h, w, 8) - 0.5))[..., None]
    elif family == "marble":
        vein = base * rng.uniform(0.3, 0.7)
        warp = _value_noise(rng, h, w, rng.uniform(3, 6), 4) * rng.uniform(3, 8)
        xx = np.linspace(0, 1, w, dtype=np.float32)[None, :]
        yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        v = np.abs(np.sin(2 * np.pi * (xx * rng.uniform(1, 3) + yy * rng.uniform(0.5, 2) + warp)))
        t = (np.clip((0.12 - v) / 0.12, 0, 1) * rng.uniform(0.4, 0.9))[..., None]
        img = base * (1 - t) + vein * t
    elif family == "checker" or family == "grid_paper":
        period = rng.uniform(12, 80)
        xx = np.arange(w, dtype=np.float32)[None, :]
        yy = np.arange(h, dtype=np.float32)[:, None]
        if family == "checker":
            other = _random_colour(rng)
            t = ((np.floor(xx / period) + np.floor(yy / period)) % 2)[..., None]
            img = base * (1 - t) + other * t
        else:
            base = np.float32([0.95, 0.95, 0.92]) * rng.uniform(0.85, 1.0)
            ink = _random_colour(rng, (0.3, 0.8))
            line = ((xx % period < 1.2) | (yy % period < 1.2)).astype(np.float32)
            img = base * (1 - 0.6 * line[..., None]) + ink * 0.6 * line[..., None]
    elif family == "sim_texture":
        from sorterbot_cloud.sim.textures import EXTRA_TRAIN_TEXTURES, TRAIN_TEXTURES, make_texture

        names = TRAIN_TEXTURES + EXTRA_TRAIN_TEXTURES
        tex = make_texture(names[int(rng.integers(len(names)))], rng, 512)
        img = cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    else:  # plain
        img = np.broadcast_to(base, (h, w, 3)).astype(np.float32) * (0.95 + 0.1 * _value_noise(rng, h, w, 2))[..., None]
    return np.clip(img, 0, 1).astype(np.float32), family


# ---------------------------------------------------------------------------------------
# procedural items


def _shade(colour: np.ndarray, factor: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.clip(colour * factor, 0, 1))


def procedural_item(rng: np.random.Generator, side_px: int, shape: str | None = None) -> Cutout:
    """Draw one plain item (single colour, simple shading) of about ``side_px`` pixels.

    Parameters
    ----------
    rng : numpy.random.Generator
    side_px : int
        Long side of the drawing, pixels.
    shape : str, optional
        One of :data:`ITEM_SHAPES`; random when None.

    Returns
    -------
    Cutout
        ``source`` is ``procedural:<shape>``.
    """
    shape = shape or ITEM_SHAPES[int(rng.integers(len(ITEM_SHAPES)))]
    s = max(12, int(side_px))
    canvas = np.zeros((s, s, 3), np.float32)
    alpha = np.zeros((s, s), np.float32)
    colour = _random_colour(rng, (0.15, 1.0))
    if shape == "domino" and rng.random() < 0.7:
        colour = np.float32([0.93, 0.92, 0.88]) * rng.uniform(0.85, 1.05)
    c = s / 2
    if shape in ("cuboid", "domino"):
        # an oblique view of a box: top face, front face and one side, lit from above
        bw = s * (rng.uniform(0.35, 0.5) if shape == "cuboid" else rng.uniform(0.25, 0.35))
        bd = s * (rng.uniform(0.3, 0.45) if shape == "cuboid" else rng.uniform(0.4, 0.48))
        bh = s * rng.uniform(0.12, 0.3)
        skew = s * rng.uniform(-0.12, 0.12)
        top = np.float32([[c - bw, c - bd - bh / 2], [c + bw, c - bd - bh / 2],
                          [c + bw + skew, c + bd - bh / 2], [c - bw + skew, c + bd - bh / 2]])
        front = np.float32([top[3], top[2], top[2] + [0, bh], top[3] + [0, bh]])
        side = np.float32([top[1], top[2], top[2] + [0, bh], top[1] + [0, bh]]) if skew < 0 else \
            np.float32([top[0], top[3], top[3] + [0, bh], top[0] + [0, bh]])
        for poly, f in ((side, rng.uniform(0.45, 0.65)), (front, rng.uniform(0.6, 0.8)), (top, 1.0)):
            cv2.fillPoly(canvas, [np.round(poly).astype(np.int32)], _shade(colour, f), lineType=cv2.LINE_AA)
            cv2.fillPoly(alpha, [np.round(poly).astype(np.int32)], 1.0, lineType=cv2.LINE_AA)
        if shape == "domino":
            pip = _shade(np.float32([0.08, 0.08, 0.08]) if colour.mean() > 0.4 else np.float32([0.95] * 3), 1.0)
            tc = top.mean(axis=0)
            cv2.line(canvas, tuple(np.round((top[0] + top[3]) / 2).astype(int)),
                     tuple(np.round((top[1] + top[2]) / 2).astype(int)), pip, max(1, s // 60))
            r = max(1, int(s * 0.025))
            for half in (-1, 1):
                n = int(rng.integers(0, 7))
                for k in range(n):
                    dx = (k % 2 - 0.5) * bw * 0.8
                    dy = half * (0.25 + 0.2 * (k // 2) / 2) * bd * 1.6
                    cv2.circle(canvas, (int(tc[0] + dx), int(tc[1] + dy)), r, pip, -1, lineType=cv2.LINE_AA)
    elif shape == "cylinder":
        rx, ry = s * rng.uniform(0.25, 0.45), s * rng.uniform(0.1, 0.25)
        hgt = s * rng.uniform(0.1, 0.4)
        top_c = (int(c), int(c - hgt / 2))
        bot_c = (int(c), int(c + hgt / 2))
        cv2.ellipse(canvas, bot_c, (int(rx), int(ry)), 0, 0, 360, _shade(colour, 0.6), -1, cv2.LINE_AA)
        cv2.rectangle(canvas, (int(c - rx), top_c[1]), (int(c + rx), bot_c[1]), _shade(colour, 0.7), -1)
        cv2.ellipse(canvas, top_c, (int(rx), int(ry)), 0, 0, 360, _shade(colour, 1.0), -1, cv2.LINE_AA)
        for img, v in ((alpha, 1.0),):
            cv2.ellipse(img, bot_c, (int(rx), int(ry)), 0, 0, 360, v, -1, cv2.LINE_AA)
            cv2.rectangle(img, (int(c - rx), top_c[1]), (int(c + rx), bot_c[1]), v, -1)
            cv2.ellipse(img, top_c, (int(rx), int(ry)), 0, 0, 360, v, -1, cv2.LINE_AA)
    elif shape == "disc":
        rx, ry = s * rng.uniform(0.3, 0.48), s * rng.uniform(0.2, 0.48)
        cv2.ellipse(canvas, (int(c), int(c)), (int(rx), int(ry)), 0, 0, 360, _shade(colour, 1.0), -1, cv2.LINE_AA)
        cv2.ellipse(alpha, (int(c), int(c)), (int(rx), int(ry)), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
        if rng.random() < 0.5:  # a coin's rim or a button's holes
            cv2.ellipse(canvas, (int(c), int(c)), (int(rx * 0.8), int(ry * 0.8)), 0, 0, 360, _shade(colour, 0.8),
                        max(1, s // 40), cv2.LINE_AA)
    elif shape == "card":
        hw, hh = s * rng.uniform(0.25, 0.45), s * rng.uniform(0.3, 0.48)
        angle = rng.uniform(0, 180)
        rect = cv2.boxPoints(((c, c), (2 * hw, 2 * hh), angle))
        paper = np.float32([0.95, 0.95, 0.93]) * rng.uniform(0.8, 1.0) if rng.random() < 0.6 else colour
        cv2.fillPoly(canvas, [np.round(rect).astype(np.int32)], _shade(paper, 1.0), lineType=cv2.LINE_AA)
        cv2.fillPoly(alpha, [np.round(rect).astype(np.int32)], 1.0, lineType=cv2.LINE_AA)
        # print: a few random marks inside (text lines, a symbol)
        ink = _random_colour(rng, (0.05, 0.7))
        inner = np.zeros((s, s), np.uint8)
        cv2.fillPoly(inner, [np.round((rect - [c, c]) * 0.75 + [c, c]).astype(np.int32)], 1)
        marks = np.zeros((s, s), np.uint8)
        for _ in range(int(rng.integers(1, 8))):
            p = rng.uniform(c - hw * 0.6, c + hw * 0.6, 2).astype(int)
            if rng.random() < 0.5:
                cv2.circle(marks, tuple(p), int(rng.integers(1, max(2, s // 10))), 1, -1)
            else:
                cv2.line(marks, tuple(p), tuple(p + rng.integers(-s // 5, s // 5 + 1, 2)), 1, max(1, s // 50))
        canvas[(marks & inner) > 0] = ink
    else:  # polygon: an irregular flat or low item (a stone, a chip, a piece of a toy)
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = s * rng.uniform(0.25, 0.48, n)
        pts = np.stack([c + rad * np.cos(ang), c + rad * np.sin(ang)], 1)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], _shade(colour, 1.0), lineType=cv2.LINE_AA)
        cv2.fillPoly(alpha, [np.round(pts).astype(np.int32)], 1.0, lineType=cv2.LINE_AA)
    # a soft specular / material variation over the whole item
    light = 0.85 + 0.3 * _value_noise(rng, s, s, 2, 1)
    canvas = np.clip(canvas * light[..., None], 0, 1)
    ys, xs = np.nonzero(alpha > 0.05)
    if len(ys) == 0:
        return procedural_item(rng, side_px, "disc")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return Cutout((canvas[y0:y1, x0:x1] * 255).astype(np.uint8), alpha[y0:y1, x0:x1], f"procedural:{shape}")


# ---------------------------------------------------------------------------------------
# composition


def _transform_cutout(cut: Cutout, rng: np.random.Generator, long_side_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale, rotate and flip a cut-out; returns (rgb float32 [0, 1], alpha float32)."""
    rgb = cut.rgb.astype(np.float32) / 255.0
    alpha = cut.alpha
    if rng.random() < 0.5:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    k = int(rng.integers(4))
    rgb, alpha = np.rot90(rgb, k), np.rot90(alpha, k)
    h, w = alpha.shape
    f = long_side_px / max(h, w)
    nw, nh = max(3, int(round(w * f))), max(3, int(round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    rgb = cv2.resize(np.ascontiguousarray(rgb), (nw, nh), interpolation=interp)
    alpha = cv2.resize(np.ascontiguousarray(alpha), (nw, nh), interpolation=interp)
    angle = rng.uniform(-25, 25) if rng.random() < 0.6 else 0.0
    if angle:
        diag = int(math.ceil(math.hypot(nw, nh)))
        m = cv2.getRotationMatrix2D((nw / 2, nh / 2), angle, 1.0)
        m[:, 2] += [(diag - nw) / 2, (diag - nh) / 2]
        rgb = cv2.warpAffine(rgb, m, (diag, diag), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(alpha, m, (diag, diag), flags=cv2.INTER_LINEAR)
        ys, xs = np.nonzero(alpha > 0.05)
        rgb, alpha = rgb[ys.min():ys.max() + 1, xs.min():xs.max() + 1], alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    # per-item colour cast: the same object under other light or of another print run
    rgb = np.clip(rgb * rng.uniform(0.8, 1.2) * rng.uniform(0.92, 1.08, 3).astype(np.float32), 0, 1)
    return rgb.astype(np.float32), alpha.astype(np.float32)


def _kelvin_rgb(kelvin: float) -> np.ndarray:
    """Approximate RGB gains of a black body at ``kelvin`` relative to 6500 K, float32 (3,).

    Tanner Helland's fit of the CIE 1964 black-body colours (valid 1000..40000 K),
    normalised so that 6500 K gives (1, 1, 1).
    """
    def rgb(k: float) -> np.ndarray:
        t = k / 100.0
        r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
        g = 99.4708025861 * math.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
        b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * math.log(t - 10) - 305.0447927307)
        return np.clip(np.float32([r, g, b]), 1, 255)
    return rgb(kelvin) / rgb(6500.0)


def compose_frame(rng: np.random.Generator, cutouts: Sequence[Cutout], size_px: tuple[int, int] | None = None,
                  n_items: tuple[int, int] = (1, 8), procedural_share: float = 0.4,
                  real_records: Sequence[Record] = (), table_frames: Sequence[Path] = (),
                  min_visible: float = 0.5) -> tuple[np.ndarray, np.ndarray, dict]:
    """Compose one domain-randomised frame with pasted items.

    Parameters
    ----------
    rng : numpy.random.Generator
    cutouts : sequence of Cutout
        Real item cut-outs (may be empty: then every item is procedural).
    size_px : (int, int), optional
        (width, height); random from :data:`FRAME_SIZES_PX` when None.
    n_items : (int, int)
        Inclusive range of pasted items.
    procedural_share : float
        Probability that a pasted item is procedural rather than a real cut-out.
    real_records, table_frames
        Real backgrounds (:func:`random_background`).
    min_visible : float
        Items with less than this fraction of their mask left visible get no box.

    Returns
    -------
    image : ndarray of shape (H, W, 3), uint8, RGB
    boxes_xyxy : ndarray of shape (N, 4), float32, pixels
    info : dict
        ``background`` family, ``sources`` of the boxed items, ``kelvin``, ``jpeg_quality``.
    """
    w, h = size_px or FRAME_SIZES_PX[int(rng.integers(len(FRAME_SIZES_PX)))]
    bg, family = random_background(rng, h, w, real_records=real_records, table_frames=table_frames)
    # light: a linear gradient over the table
    gx, gy = rng.normal(0, 1, 2)
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    gradient = 1.0 + rng.uniform(0, 0.5) * (gx * xx + gy * yy) / (math.hypot(gx, gy) + 1e-6)
    frame = bg.copy()
    ids = np.zeros((h, w), np.int32)  # which pasted item each pixel shows (0 = table)
    alphas, sources = [], []
    short = min(h, w)
    n = int(rng.integers(n_items[0], n_items[1] + 1))
    # apparent size: log-uniform from 4 % to 65 % of the short side; many items means smaller ones
    hi = 0.65 if n <= 2 else (0.4 if n <= 4 else 0.25)
    light_dir = rng.uniform(0, 2 * np.pi)
    for k in range(n):
        long_side = int(short * math.exp(rng.uniform(math.log(0.04), math.log(hi))))
        if cutouts and rng.random() >= procedural_share:
            cut = cutouts[int(rng.integers(len(cutouts)))]
        else:
            cut = procedural_item(rng, long_side)
        rgb, alpha = _transform_cutout(cut, rng, max(8, long_side))
        ih, iw = alpha.shape
        if ih >= h or iw >= w:
            continue
        for _ in range(10):  # prefer places that overlap little
            x0, y0 = int(rng.integers(0, w - iw + 1)), int(rng.integers(0, h - ih + 1))
            if (ids[y0:y0 + ih, x0:x0 + iw][alpha > 0.5] > 0).mean() < 0.3 if (alpha > 0.5).any() else True:
                break
        # shadow: the mask, offset away from the light, blurred, darkening the table
        off = max(1.0, 0.06 * max(ih, iw)) * rng.uniform(0.3, 1.0)
        dx, dy = int(round(off * math.cos(light_dir))), int(round(off * math.sin(light_dir)))
        shadow = np.zeros((h, w), np.float32)
        sx0, sy0 = min(max(0, x0 + dx), w - iw), min(max(0, y0 + dy), h - ih)
        shadow[sy0:sy0 + ih, sx0:sx0 + iw] = alpha
        shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.8, off * rng.uniform(0.5, 1.5)))
        frame *= (1 - rng.uniform(0.15, 0.5) * shadow)[..., None]
        # blending (Dwibedi et al.): none, Gaussian-feathered, or a wider feather
        mode = rng.random()
        a = alpha if mode < 0.35 else cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.5, 2.0) if mode < 0.8 else 3.0)
        region = frame[y0:y0 + ih, x0:x0 + iw]
        frame[y0:y0 + ih, x0:x0 + iw] = region * (1 - a[..., None]) + rgb * a[..., None]
        full = np.zeros((h, w), np.float32)
        full[y0:y0 + ih, x0:x0 + iw] = alpha
        ids[full > 0.5] = k + 1
        alphas.append(full > 0.5)
        sources.append(cut.source)
    frame *= gradient[..., None]
    # camera: exposure, white balance of another light, vignetting, blur, noise, JPEG
    kelvin = float(rng.uniform(2700, 8000))
    frame = frame * _kelvin_rgb(kelvin) * rng.uniform(0.6, 1.35)
    gamma = rng.uniform(0.8, 1.25)
    frame = np.clip(frame, 0, 1) ** gamma
    if rng.random() < 0.5:
        r2 = (xx * 2) ** 2 + (yy * 2) ** 2
        frame *= (1 - rng.uniform(0.1, 0.35) * r2 / 2)[..., None]
    if rng.random() < 0.4:
        frame = cv2.GaussianBlur(frame, (0, 0), rng.uniform(0.5, 1.6))
    frame = frame + rng.normal(0, rng.uniform(0.0, 0.03), frame.shape).astype(np.float32)
    image = (np.clip(frame, 0, 1) * 255).astype(np.uint8)
    quality = int(rng.integers(35, 96))
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    boxes, kept = [], []
    for k, mask in enumerate(alphas):
        visible = ids == k + 1
        if visible.sum() < max(16, min_visible * mask.sum()):
            continue
        ys, xs = np.nonzero(visible)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        kept.append(sources[k])
    info = {"background": family, "sources": kept, "kelvin": round(kelvin), "jpeg_quality": quality}
    return np.ascontiguousarray(image), np.asarray(boxes, np.float32).reshape(-1, 4), info


def write_dataset(out_dir: str | Path, n_frames: int, cutouts: Sequence[Cutout], seed: int = 0,
                  real_records: Sequence[Record] = (), table_frames: Sequence[Path] = (),
                  procedural_share: float = 0.4, n_items: tuple[int, int] = (1, 8),
                  progress: bool = False) -> dict:
    """Write ``n_frames`` composed frames and their COCO annotations.

    Parameters
    ----------
    out_dir : path
        Gets ``annotations.json`` and ``images/NNNNNN.jpg``.
    n_frames : int
    cutouts, real_records, table_frames, procedural_share, n_items
        See :func:`compose_frame`.
    seed : int
        Frame ``i`` is drawn from ``numpy.random.default_rng((seed, i))``: reproducible and
        independent of ``n_frames``.
    progress : bool

    Returns
    -------
    dict
        The COCO dict written (categories ``item`` 1 and ``container`` 2).
    """
    from sorterbot_cloud.structures import CLASS_NAMES

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    it = range(n_frames)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="compose")
    for i in it:
        rng = np.random.default_rng((seed, i))
        image, boxes, info = compose_frame(rng, cutouts, real_records=real_records, table_frames=table_frames,
                                           procedural_share=procedural_share, n_items=n_items)
        name = f"images/{i:06d}.jpg"
        cv2.imwrite(str(out_dir / name), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": i + 1, "file_name": name, "width": image.shape[1], "height": image.shape[0],
                       "background": info["background"]})
        for box, source in zip(boxes, info["sources"], strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                                "source": source})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(CLASS_NAMES)],
            "info": {"description": f"cut-paste frames, seed {seed}"}}
    (out_dir / "annotations.json").write_text(json.dumps(coco))
    return coco
