"""Procedural table textures for domain randomisation.

Each texture is an RGB image (uint8, (S, S, 3)) generated from a seeded generator, so
the same seed gives the same table. The split into :data:`TRAIN_TEXTURES` and
:data:`HELDOUT_TEXTURES` is fixed.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from sorterbot_cloud.errors import BadRequest


def smooth_noise(rng: np.random.Generator, size: int, cells: int | tuple[int, int], octaves: int = 1, channels: int = 1) -> np.ndarray:
    """Multi-octave value noise, float32 (size, size) or (size, size, channels), roughly in [0, 1].

    ``cells`` is the number of random lattice cells across at the coarsest octave
    (an int, or (rows, cols) for anisotropic noise); each octave doubles it and halves
    the amplitude. Upsampling is bicubic (OpenCV).
    """
    cy, cx = (cells, cells) if isinstance(cells, int) else cells
    shape = (size, size) if channels == 1 else (size, size, channels)
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        grid = rng.random((max(cy, 2), max(cx, 2)) + (() if channels == 1 else (channels,)), dtype=np.float32)
        out += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
        cy, cx = cy * 2, cx * 2
    return np.clip(out / total, 0, 1)


def _mix(a, b, t):
    t = np.asarray(t, np.float32)[..., None]
    return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t


def _tint(rng, base, spread=0.08):
    return np.clip(np.asarray(base, np.float32) * rng.uniform(1 - spread, 1 + spread, 3), 0, 1)


def _wood(rng, s):
    light = _tint(rng, rng.choice([(0.78, 0.58, 0.38), (0.62, 0.42, 0.25), (0.85, 0.70, 0.50)]))
    dark = light * rng.uniform(0.55, 0.75)
    warp = smooth_noise(rng, s, (3, 6), 3) * rng.uniform(6, 14)
    y = np.linspace(0, 1, s, dtype=np.float32)[:, None]
    freq = rng.uniform(25, 50)
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (y * freq + warp))
    fine = smooth_noise(rng, s, (40, 400), 2)
    planks = (np.floor(y * rng.integers(4, 8)) % 2) * 0.06
    t = np.clip(grain ** 3 * 0.7 + fine * 0.3 + planks, 0, 1)
    return _mix(light, dark, t)


def _fabric(rng, s):
    col = _tint(rng, rng.choice([(0.25, 0.30, 0.55), (0.55, 0.20, 0.20), (0.35, 0.45, 0.30), (0.60, 0.58, 0.52)]), 0.15)
    period = rng.uniform(5, 9)
    x = np.arange(s, dtype=np.float32)
    wx = np.sin(2 * np.pi * x / period)[None, :]
    wy = np.sin(2 * np.pi * x / period)[:, None]
    weave = 0.5 + 0.25 * wx * np.sign(wy) + 0.25 * wy * np.sign(wx)
    mottle = smooth_noise(rng, s, 8, 3)
    return col[None, None] * (0.7 + 0.25 * weave + 0.2 * (mottle - 0.5))[..., None]


def _concrete(rng, s):
    grey = rng.uniform(0.45, 0.7)
    base = smooth_noise(rng, s, 6, 6)
    speck = rng.random((s, s), dtype=np.float32)
    v = grey * (0.75 + 0.4 * base) - 0.25 * (speck > 0.985) + 0.12 * (speck < 0.01)
    col = np.clip(np.array([1.0, 0.98, 0.95], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32), 0, 1.1)
    return v[..., None] * col


def _noise(rng, s):
    img = smooth_noise(rng, s, int(rng.integers(4, 30)), 4, channels=3)
    return 0.2 + 0.6 * (img - img.min()) / (np.ptp(img) + 1e-6)


def _felt(rng, s):
    col = _tint(rng, rng.choice([(0.10, 0.40, 0.20), (0.15, 0.15, 0.35), (0.45, 0.10, 0.12)]), 0.15)
    fibres = rng.random((s, s), dtype=np.float32)
    fibres = cv2.GaussianBlur(fibres, (0, 0), 0.8)
    return col[None, None] * (0.8 + 0.5 * (fibres - 0.5) + 0.2 * (smooth_noise(rng, s, 10, 2) - 0.5))[..., None]


def _tiles(rng, s):
    col = _tint(rng, rng.choice([(0.85, 0.85, 0.82), (0.55, 0.65, 0.70), (0.80, 0.70, 0.55)]), 0.1)
    grout = col * 0.55
    n = int(rng.integers(6, 14))
    x = (np.arange(s) * n / s) % 1.0
    line = (x < 0.04)
    mask = line[None, :] | line[:, None]
    cell = smooth_noise(rng, s, n, 1)
    img = col[None, None] * (0.9 + 0.15 * cell)[..., None]
    img[mask] = grout
    return img


def _paper(rng, s):
    col = _tint(rng, rng.choice([(0.95, 0.94, 0.90), (0.92, 0.90, 0.82), (0.88, 0.90, 0.93)]), 0.03)
    fibres = cv2.resize(rng.random((s // 2, s // 2), dtype=np.float32), (s, s), interpolation=cv2.INTER_CUBIC)
    lines = np.zeros((s, s), np.float32)
    if rng.random() < 0.5:
        period = int(rng.integers(40, 70))
        lines[::period, :] = 1.0
        lines = cv2.GaussianBlur(lines, (0, 0), 0.8) * 2
    img = col[None, None] * (0.95 + 0.1 * (fibres - 0.5) + 0.03 * (smooth_noise(rng, s, 4, 2) - 0.5))[..., None]
    return _mix(img, np.array([0.45, 0.6, 0.85], np.float32), np.clip(lines, 0, 1) * 0.6)


def _cork_board(rng, s):
    col = _tint(rng, (0.70, 0.52, 0.32), 0.08)
    n = rng.random((s, s), dtype=np.float32)
    grains = cv2.GaussianBlur(n, (0, 0), 2.0)
    grains = (grains - grains.min()) / (np.ptp(grains) + 1e-6)
    return col[None, None] * (0.6 + 0.7 * grains)[..., None]


def _marble_stone(rng, s):
    base = _tint(rng, (0.92, 0.91, 0.89), 0.03)
    warp = smooth_noise(rng, s, 4, 4) * rng.uniform(4, 8)
    x = np.linspace(0, 1, s, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, s, dtype=np.float32)[:, None]
    veins = np.abs(np.sin(2 * np.pi * (x * 2 + y * 1.5 + warp)))
    t = np.clip((0.15 - veins) / 0.15, 0, 1) * 0.6
    return _mix(base, base * 0.45, t)


def _laminate(rng, s):
    """A plain desk top (melamine, laminate, painted wood): one colour, faint grain and mottle.

    Half the draws are near-white (value 0.86..0.97, little saturation), the common office
    desk, against which white and grey objects have hardly any contrast; the rest are any
    hue at value 0.25..0.9. A domain-randomisation surface for detector training only
    (:data:`EXTRA_TRAIN_TEXTURES`), not one of the fixed split's textures.
    """
    if rng.random() < 0.5:
        hsv = (rng.uniform(0, 180), rng.uniform(0, 20), rng.uniform(219, 247))
    else:
        hsv = (rng.uniform(0, 180), rng.uniform(0, 140), rng.uniform(64, 230))
    col = cv2.cvtColor(np.uint8([[hsv]]), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0
    grain = smooth_noise(rng, s, (int(rng.integers(60, 200)), int(rng.integers(2, 6))), 2)
    if rng.random() < 0.5:
        grain = grain.T  # grain along x or y
    mottle = smooth_noise(rng, s, 3, 3)
    return col[None, None] * (0.97 + 0.04 * (grain - 0.5) + 0.05 * (mottle - 0.5))[..., None]


TEXTURES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "wood": _wood,
    "fabric": _fabric,
    "concrete": _concrete,
    "noise": _noise,
    "felt": _felt,
    "tiles": _tiles,
    "paper": _paper,
    "cork_board": _cork_board,
    "marble_stone": _marble_stone,
    "laminate": _laminate,
}

#: Table textures for training data (fixed split).
TRAIN_TEXTURES: tuple[str, ...] = ("wood", "fabric", "concrete", "noise", "felt", "tiles")
#: Table textures never used for training (fixed split).
HELDOUT_TEXTURES: tuple[str, ...] = ("paper", "cork_board", "marble_stone")
#: Table textures that detector-training datasets may add to the training split's
#: (``simulate dataset --extra-textures``); never drawn by simulated sessions, so the
#: fixed split and every evaluation session stay as they were.
EXTRA_TRAIN_TEXTURES: tuple[str, ...] = ("laminate",)


def make_texture(name: str, rng: np.random.Generator, size_px: int = 1024) -> np.ndarray:
    """Render a procedural table texture.

    Parameters
    ----------
    name : str
        One of :data:`TEXTURES`.
    rng : numpy.random.Generator
    size_px : int
        Side of the square texture.

    Returns
    -------
    ndarray of shape (size_px, size_px, 3), uint8, RGB

    Raises
    ------
    BadRequest
        If ``name`` is not a known texture.
    """
    if name not in TEXTURES:
        raise BadRequest(f"unknown texture {name!r}; expected one of {sorted(TEXTURES)}")
    img = np.asarray(TEXTURES[name](rng, size_px), np.float32)
    # convertScaleAbs rounds and saturates to uint8 in one pass; clip negatives first
    return cv2.convertScaleAbs(np.maximum(img, 0.0, out=img), alpha=255.0)


#: Shapes of flat table markings (:func:`paint_table_markings`).
MARKING_SHAPES: tuple[str, ...] = ("ring", "loop", "blob", "stroke")


def paint_table_markings(texture: np.ndarray, rng: np.random.Generator, n_markings: int, px_per_mm: float) -> np.ndarray:
    """Paint flat markings (stains, printed rings, pen loops, strokes) onto a table texture.

    Real tables carry marks that are neither items nor containers: a coffee ring, a pen
    loop, a stain. A detector trained only on clean tables may box such a mark (a closed
    grey loop looks like a flat washer); frames with markings teach it that a mark with
    no height is table. The marks are flat (painted into the texture, so they never cast
    a shadow) and are never annotated.

    Parameters
    ----------
    texture : ndarray of shape (S, S, 3), uint8, RGB
        The table texture (:func:`make_texture`); not modified.
    rng : numpy.random.Generator
        Draws each mark's shape (:data:`MARKING_SHAPES`), size (10 to 70 mm across), line
        width (1 to 5 mm), colour (darker or lighter than the table, or a random hue),
        opacity (0.3 to 0.9) and edge blur.
    n_markings : int
        How many marks, >= 0.
    px_per_mm : float
        Texture pixels per millimetre of table (> 0).

    Returns
    -------
    ndarray of shape (S, S, 3), uint8, RGB
        A new texture.

    Raises
    ------
    BadRequest
        If ``texture`` is not (S, S, 3) uint8, ``n_markings`` < 0 or ``px_per_mm`` <= 0.
    """
    if texture.ndim != 3 or texture.shape[2] != 3 or texture.dtype != np.uint8:
        raise BadRequest(f"texture must be (S, S, 3) uint8, got {texture.shape} {texture.dtype}")
    if n_markings < 0 or not px_per_mm > 0:
        raise BadRequest(f"n_markings must be >= 0 and px_per_mm > 0, got {n_markings}, {px_per_mm}")
    out = texture.astype(np.float32)
    size = texture.shape[0]
    table_colour = out.reshape(-1, 3).mean(0)
    for _ in range(int(n_markings)):
        shape = str(rng.choice(MARKING_SHAPES))
        diameter_px = rng.uniform(10.0, 70.0) * px_per_mm
        width_px = max(1, int(round(rng.uniform(1.0, 5.0) * px_per_mm)))
        blur_px = float(rng.uniform(0.3, 1.5)) * px_per_mm
        # each mark is drawn in a square window around it (not the whole texture): fast with many marks
        half = int(np.ceil(diameter_px * 0.75 + width_px + 4 * blur_px)) + 2
        cx, cy = (rng.uniform(0.05, 0.95, 2) * size).astype(int)
        x0, y0, x1, y1 = max(cx - half, 0), max(cy - half, 0), min(cx + half, size), min(cy + half, size)
        if x1 <= x0 or y1 <= y0:
            continue
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        centre = (int(cx - x0), int(cy - y0))  # the mark's centre in window pixels
        if shape == "ring":
            axes = (int(diameter_px / 2), int(diameter_px / 2 * rng.uniform(0.7, 1.0)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, width_px, cv2.LINE_AA)
        elif shape in ("loop", "blob"):
            # a closed curve: a circle whose radius wobbles with two random harmonics
            angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            radius = diameter_px / 2 * (1 + 0.25 * np.sin(2 * angles + rng.uniform(0, 6.3)) + 0.15 * np.sin(3 * angles + rng.uniform(0, 6.3)))
            points = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1).round().astype(np.int32)
            if shape == "loop":
                cv2.polylines(mask, [points], True, 255, width_px, cv2.LINE_AA)
            else:
                cv2.fillPoly(mask, [points], 255, cv2.LINE_AA)
        else:  # stroke: an open arc
            start = float(rng.uniform(0, 360))
            cv2.ellipse(mask, centre, (int(diameter_px / 2), int(diameter_px / 4)), float(rng.uniform(0, 180)),
                        start, start + float(rng.uniform(90, 270)), 255, width_px, cv2.LINE_AA)
        alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), blur_px) * float(rng.uniform(0.3, 0.9))
        kind = rng.uniform()
        if kind < 0.45:
            colour = table_colour * rng.uniform(0.3, 0.75)  # darker: a stain, pencil or pen
        elif kind < 0.7:
            colour = table_colour + (255.0 - table_colour) * rng.uniform(0.3, 0.8)  # lighter: chalk, a faded print
        else:
            colour = rng.uniform(0, 255, 3)  # a coloured print or marker
        window = out[y0:y1, x0:x1]
        out[y0:y1, x0:x1] = window * (1 - alpha[..., None]) + colour[None, None, :] * alpha[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
