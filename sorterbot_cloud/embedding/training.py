"""Train the item embedder from scratch with supervised contrastive learning.

Recipe (no pretrained weights are reachable here):

- Data: item crops per type folder (the simulator's ``export_item_crops``), letterboxed
  once to ``1.25 x`` the input side and kept in memory.
- Classes: each type, plus recoloured pseudo-classes of the coloured types
  (:func:`colour_classes`): a red cap with swapped channels is a blue cap, in greyscale
  a grey cap; each is a class of its own.
- Batches of ``P`` classes x ``K`` crops x 2 augmented views.
- Loss: supervised contrastive loss on the L2-normalised 512-wide penultimate features,
  positives = same type (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020,
  eq. 2, the "L_out" form), plus ``instance_weight`` times the same loss with
  positives = the other view of the same crop (SimCLR's NT-Xent, Chen et al. 2020). The
  instance term keeps features that tell crops apart beyond the training types, which is
  what lets types never seen in training separate.
- Augmentation that keeps a type's identity: random resized crop (scale 0.55..1), 90°
  rotations and flips (items lie anywhere on the table), brightness, contrast and
  saturation jitter, small per-channel gain (white balance), blur and noise. No hue
  jitter: colour is what tells many types apart.
- SGD with Nesterov momentum, linear warm-up then cosine decay, weight decay 5e-4.
- Checkpoints (``last.pt``) every ``checkpoint_every`` steps; ``resume=True`` continues
  from one. The exported file is an fp16 ``state_dict`` plus a JSON sidecar.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from sorterbot_cloud import schedule

from .crops import letterbox
from .data import CropSet
from .embedder import (
    EMBEDDING_DIM,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Embedder,
    build_resnet18,
    focus_mask,
    load_state_dict,
    sidecar_path,
)
from .evaluation import grouping_aris

log = logging.getLogger(__name__)


@dataclass
class EmbedderTrainConfig:
    """Hyper-parameters of :func:`train_embedder`.

    Parameters
    ----------
    input_size_px : int
        Side of the square network input.
    steps : int
        Optimiser steps.
    types_per_batch, crops_per_type : int
        ``P`` and ``K``; a batch holds ``2 * P * K`` views.
    lr : float
        Peak learning rate (SGD).
    weight_decay : float
    warmup_steps : int
    temperature : float
        Softmax temperature of the contrastive losses (0.1 as in SupCon).
    instance_weight : float
        Weight of the instance (SimCLR) term.
    colour_permutations : bool
        Add recoloured pseudo-classes (channel permutations, greyscale; :func:`colour_classes`).
    time_budget_s : float
        When > 0, training stops after this many seconds (or ``steps``, whichever comes
        first) and the cosine schedule follows the elapsed fraction of the budget: the
        run ends on time on a busy machine. The steps actually done are recorded.
    focus_radii : (float, float) or None
        Centre weighting of the input (:func:`~sorterbot_cloud.embedding.embedder.focus_mask`), the same
        at inference (written to the sidecar).
    background_swap : float
        Probability of putting a crop's item (GrabCut mask, :func:`foreground_masks`) onto
        another crop's table or a plain random colour, so the embedding learns to ignore the
        table.
    init_from : str or None
        Start from this model (a checkpoint or weights file) instead of random weights;
        the optimiser and schedule start afresh.
    type_shares : dict of str to float
        Share of the batch draws given to the classes of the types whose name starts with
        the key (:func:`class_draw_weights`); empty: every class equally often. Kinds that
        must be told apart from each other (the boards of one real set) need to meet in the
        same batch to be negatives of each other: with 8 of 64 classes drawn uniformly, two
        or more of four given classes meet in one step of fourteen; with a share of 0.25
        for them (0.19 for six others) in six of ten (numpy draws, 20,000 batches).
    seed : int
    threads : int
        ``torch.set_num_threads``.
    checkpoint_every, eval_every, log_every : int
        In steps; ``eval_every`` 0 disables validation.
    """

    input_size_px: int = 64
    steps: int = 4000
    types_per_batch: int = 8
    crops_per_type: int = 4
    lr: float = 0.05
    weight_decay: float = 5e-4
    warmup_steps: int = 200
    temperature: float = 0.1
    instance_weight: float = 0.25
    colour_permutations: bool = True
    time_budget_s: float = 0.0
    focus_radii: tuple[float, float] | None = (0.3, 0.5)
    background_swap: float = 0.0
    type_shares: dict = field(default_factory=dict)
    init_from: str | None = None
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 200
    eval_every: int = 250
    log_every: int = 25
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- losses


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2, "L_out").

    For each anchor ``i`` with at least one positive: minus the mean over its positives
    ``p`` of ``log(exp(z_i.z_p / T) / sum_{a != i} exp(z_i.z_a / T))``; averaged over
    anchors. With labels that pair the two views of each crop it is SimCLR's NT-Xent.

    Parameters
    ----------
    features : Tensor of shape (B, D), float, L2-normalised rows
    labels : Tensor of shape (B,), int
    temperature : float

    Returns
    -------
    Tensor, scalar
        0 when no anchor has a positive.
    """
    b = features.shape[0]
    logits = features @ features.T / temperature
    eye = torch.eye(b, dtype=torch.bool, device=features.device)
    logits = logits.masked_fill(eye, -1e9)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = positives.sum(1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return features.sum() * 0.0  # no anchor has a positive: nothing to pull together
    loss = -(log_prob * positives).sum(1)[has_pos] / n_pos[has_pos]
    return loss.mean()


# ---------------------------------------------------------------------- augmentation


class Augmenter:
    """Type-preserving random augmentation of letterboxed crops (see module docstring).

    Parameters
    ----------
    out_size_px : int
        Side of the output square.
    rng : numpy.random.Generator
    """

    def __init__(self, out_size_px: int, rng: np.random.Generator):
        self.out_size_px = out_size_px
        self.rng = rng

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Augment one (S, S, 3) uint8 RGB image into (out, out, 3) uint8 RGB."""
        rng, out = self.rng, self.out_size_px
        s = image.shape[0]
        area = rng.uniform(0.55, 1.0) * s * s
        aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
        w = int(round(min(s, math.sqrt(area * aspect))))
        h = int(round(min(s, math.sqrt(area / aspect))))
        x0, y0 = rng.integers(0, s - w + 1), rng.integers(0, s - h + 1)
        img = cv2.resize(image[y0 : y0 + h, x0 : x0 + w], (out, out), interpolation=cv2.INTER_AREA if w > out else cv2.INTER_LINEAR)
        img = np.rot90(img, rng.integers(4))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        x = img.astype(np.float32)
        x *= rng.uniform(0.75, 1.25)  # brightness
        mean = x.mean()
        x = (x - mean) * rng.uniform(0.75, 1.25) + mean  # contrast
        grey = x.mean(axis=2, keepdims=True)
        x = (x - grey) * rng.uniform(0.8, 1.2) + grey  # saturation
        x *= rng.uniform(0.95, 1.05, size=3)  # white balance
        if rng.random() < 0.3:
            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.0))
        if rng.random() < 0.3:
            x += rng.normal(0, rng.uniform(1, 5), size=x.shape).astype(np.float32)
        return np.clip(x, 0, 255).astype(np.uint8)


#: Colour transforms that make pseudo-classes: the six orders of the RGB channels (index 0
#: is the identity) and, last, greyscale (ITU-R BT.601 luma).
CHANNEL_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
GREY = len(CHANNEL_PERMUTATIONS)
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def _transform_colour(rgb: np.ndarray, transform: int) -> np.ndarray:
    """Apply colour transform ``transform`` to the last axis (3 channels) of ``rgb``."""
    if transform == GREY:
        luma = rgb.astype(np.float32) @ LUMA_WEIGHTS
        return np.repeat(luma[..., None], 3, axis=-1)
    return rgb[..., list(CHANNEL_PERMUTATIONS[transform])]


def centre_mask(size_px: int) -> np.ndarray:
    """Soft mask of the crop centre, where the item lies: 1 within 0.3 of the side from the
    centre, falling linearly to 0 at 0.5; ndarray of shape (S, S, 1), float32."""
    yy, xx = np.mgrid[:size_px, :size_px].astype(np.float32) + 0.5
    r = np.hypot(xx - size_px / 2, yy - size_px / 2) / size_px
    return np.clip((0.5 - r) / 0.2, 0.0, 1.0)[..., None]


def recolour(image: np.ndarray, transform: int, mask: np.ndarray) -> np.ndarray:
    """Recolour the centre of a letterboxed crop (the item), keep the border (the table).

    Parameters
    ----------
    image : ndarray of shape (S, S, 3), uint8, RGB
    transform : int
        Index into the colour transforms (:data:`CHANNEL_PERMUTATIONS`, then :data:`GREY`).
    mask : ndarray of shape (S, S, 1), float32
        :func:`centre_mask`.

    Returns
    -------
    ndarray of shape (S, S, 3), uint8, RGB
    """
    if transform == 0:
        return image
    out = mask * _transform_colour(image, transform).astype(np.float32) + (1 - mask) * image
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def colour_classes(images: np.ndarray, type_ids: np.ndarray, min_distance: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-classes made by recolouring each type's items.

    A red cap with its channels swapped is a blue cap, and a grey cap is a grey cap:
    types the training set does not have, of the same shape and another colour. Each
    colour transform (channel permutations, greyscale) of a type whose mean item colour
    (centre half of the letterboxed crops) lies at least ``min_distance`` (RGB, 0..255)
    from every colour already kept becomes a class of its own; the others fold into the
    class they match. A grey type therefore stays one class; a red one gets four (red,
    green, blue, grey). Greyscale classes make the network tell shapes apart without
    colour, which types like a white die and a zinc washer need; the permutations make it
    keep colour. The transform is applied to the crop's centre only (:func:`recolour`), so
    the table around the item keeps its own colours.

    Parameters
    ----------
    images : ndarray of shape (N, S, S, 3), uint8, RGB
        Letterboxed crops.
    type_ids : ndarray of shape (N,), int
    min_distance : float

    Returns
    -------
    class_type : ndarray of shape (C,), int64
        Type of each pseudo-class.
    class_transform : ndarray of shape (C,), int64
        Colour transform of each pseudo-class (0 = none).
    """
    s = images.shape[1]
    centre = images[:, s // 4 : s - s // 4, s // 4 : s - s // 4].reshape(len(images), -1, 3).mean(1)
    class_type, class_transform = [], []
    for t in np.unique(type_ids):
        mean_rgb = np.median(centre[type_ids == t], axis=0)
        kept: list[np.ndarray] = []
        for transform in range(GREY + 1):
            colour = _transform_colour(mean_rgb, transform)
            if all(np.linalg.norm(colour - k) >= min_distance for k in kept):
                kept.append(colour)
                class_type.append(int(t))
                class_transform.append(transform)
    return np.asarray(class_type, np.int64), np.asarray(class_transform, np.int64)


def foreground_masks(crops: list[np.ndarray], size_px: int, margin: float = 0.1, iterations: int = 3) -> np.ndarray:
    """Rough item masks of letterboxed crops, by GrabCut seeded with the item's box.

    A crop is the item's box grown by ``margin`` on each side, so the box is known inside
    it; GrabCut (Rother et al. 2004, ``cv2.grabCut``) separates the item from the table
    around it. A mask covering under 5 % or over 98 % of the box falls back to the ellipse
    inscribed in the box. Used only in training, to put items on other tables.

    Parameters
    ----------
    crops : list of ndarray of shape (h_i, w_i, 3), uint8, RGB
    size_px : int
        Side of the letterboxed square (as :func:`~sorterbot_cloud.embedding.crops.letterbox`).
    margin : float
        The context margin the crops were cut with.
    iterations : int

    Returns
    -------
    ndarray of shape (N, S, S, 1), float32 in [0, 1]
        Slightly blurred so pasted edges are soft.
    """
    out = np.zeros((len(crops), size_px, size_px, 1), np.float32)
    for n, crop in enumerate(crops):
        img = letterbox(crop, size_px)
        h, w = crop.shape[:2]
        scale = size_px / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        left, top = (size_px - new_w) // 2, (size_px - new_h) // 2
        f = margin / (1 + 2 * margin)
        x0, y0 = left + int(round(new_w * f)), top + int(round(new_h * f))
        bw, bh = max(2, int(round(new_w * (1 - 2 * f)))), max(2, int(round(new_h * (1 - 2 * f))))
        ellipse = np.zeros((size_px, size_px), np.uint8)
        cv2.ellipse(ellipse, (x0 + bw // 2, y0 + bh // 2), (max(1, bw // 2), max(1, bh // 2)), 0, 0, 360, 1, -1)
        mask = ellipse
        if bw >= 4 and bh >= 4:
            gc = np.zeros((size_px, size_px), np.uint8)
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            try:
                cv2.setRNGSeed(n)
                cv2.grabCut(np.ascontiguousarray(img[..., ::-1]), gc, (x0, y0, bw, bh), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
                fg = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
                if 0.05 < fg.sum() / (bw * bh) < 0.98:
                    mask = fg
            except cv2.error:
                pass
        out[n, ..., 0] = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8)
    return np.clip(out, 0.0, 1.0)


def swap_background(image: np.ndarray, fg_mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Paste the item (``fg_mask``) of ``image`` onto ``background``; all (S, S, ...) arrays."""
    out = fg_mask * image.astype(np.float32) + (1 - fg_mask) * background.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def class_draw_weights(class_type_names: list[str], type_shares: dict) -> np.ndarray | None:
    """Draw weight of each training class from :attr:`EmbedderTrainConfig.type_shares` (prefix -> share).

    A class belongs to the group of its longest matching prefix. Each group's classes
    together get the group's share of the draw probability, split equally among them; the
    classes of no group share what is left, equally. Shares, not per-class weights, so that
    a set of four real kinds keeps its place in the batches however many simulated or
    procedural types the folder also holds.

    Parameters
    ----------
    class_type_names : list of str
        The type name of each class (pseudo-classes share their type's name).
    type_shares : dict of str to float
        Name prefix -> share of the draws, each in (0, 1), summing to less than 1 when some
        class matches no prefix (at most 1 otherwise).

    Returns
    -------
    ndarray of shape (n_classes,), float64, or None
        Draw probabilities (summing to 1); None when ``type_shares`` is empty (uniform draws).

    Raises
    ------
    ValueError
        If a share is not in (0, 1), the shares leave nothing for the other classes, or a
        prefix matches no type.
    """
    if not type_shares:
        return None
    for prefix, share in type_shares.items():
        if not (np.isfinite(share) and 0.0 < share < 1.0):
            raise ValueError(f"the share of {prefix!r} must be in (0, 1), got {share}")
    group = []
    for name in class_type_names:
        matches = [k for k in type_shares if name.startswith(k)]
        group.append(max(matches, key=len) if matches else None)
    for prefix in type_shares:
        if prefix not in group:
            raise ValueError(f"type share prefix {prefix!r} matches no training type")
    rest = 1.0 - float(sum(type_shares.values()))
    n_rest = group.count(None)
    if (n_rest and rest <= 0.0) or rest < -1e-9:
        raise ValueError(f"the type shares sum to {1.0 - rest:g}, leaving nothing for the other {n_rest} classes")
    out = np.array([type_shares[g] / group.count(g) if g is not None else rest / n_rest for g in group])
    return out / out.sum()


class BatchSampler:
    """Draw ``P`` types x ``K`` crops (with replacement when a type has fewer than ``K``).

    ``type_weights`` (one non-negative value per type, in the order of ``np.unique(type_ids)``)
    makes a type's draw probability proportional to its weight (``numpy`` weighted draws
    without replacement); None: uniform.
    """

    def __init__(self, type_ids: np.ndarray, types_per_batch: int, crops_per_type: int, rng: np.random.Generator,
                 type_weights: np.ndarray | None = None):
        self.by_type = [np.flatnonzero(type_ids == t) for t in np.unique(type_ids)]
        self.p = min(types_per_batch, len(self.by_type))
        self.k = crops_per_type
        self.rng = rng
        self.prob = None
        if type_weights is not None:
            w = np.asarray(type_weights, np.float64)
            if w.shape != (len(self.by_type),) or not np.all(np.isfinite(w)) or np.any(w < 0) or np.count_nonzero(w) < self.p:
                raise ValueError(f"type_weights must be {len(self.by_type)} finite values >= 0, at least {self.p} of them > 0")
            self.prob = w / w.sum()

    def __call__(self) -> np.ndarray:
        chosen = self.rng.choice(len(self.by_type), self.p, replace=False, p=self.prob)
        idx = [self.rng.choice(self.by_type[t], self.k, replace=len(self.by_type[t]) < self.k) for t in chosen]
        return np.concatenate(idx)


# -------------------------------------------------------------------------- training


def lr_factor(step: int, elapsed_s: float, cfg: EmbedderTrainConfig) -> float:
    """Learning-rate multiplier at ``step``: :func:`sorterbot_cloud.schedule.lr_factor` at the
    run's :func:`~sorterbot_cloud.schedule.progress` (steps, or the time budget when set)."""
    run_progress = schedule.progress(step, cfg.steps, elapsed_s, cfg.time_budget_s or None)
    return schedule.lr_factor(step, run_progress, cfg.warmup_steps)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_embedder(
    train: CropSet,
    out_dir: str | Path,
    cfg: EmbedderTrainConfig,
    *,
    val: CropSet | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train ResNet18 from scratch and return the run's history.

    Parameters
    ----------
    train : CropSet
        Training crops with their type; at least two types.
    out_dir : path
        Receives ``last.pt`` (checkpoint), ``history.json`` and ``train.log`` lines via logging.
    cfg : EmbedderTrainConfig
    val : CropSet, optional
        Crops of types never used for training; their grouping ARI is logged every
        ``cfg.eval_every`` steps (monitoring only: the last step's model is kept).
    resume : bool
        Continue from ``out_dir/last.pt`` when it exists.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    dict
        ``{"config", "losses": [[step, loss, supcon, instance, lr], ...],
        "val": [[step, mean_ari], ...], "seconds", "model": state_dict}``.

    Raises
    ------
    ValueError
        If ``train`` has fewer than two types.
    """
    if len(np.unique(train.type_ids)) < 2:
        raise ValueError("training needs crops of at least two types")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    load_size = int(round(cfg.input_size_px * 1.25))
    images = np.stack([letterbox(c, load_size) for c in train.crops])
    augment = Augmenter(cfg.input_size_px, rng)
    mask = centre_mask(load_size)
    fg_masks = foreground_masks(train.crops, load_size) if cfg.background_swap > 0 else None
    if cfg.colour_permutations:
        class_type, class_perm = colour_classes(images, train.type_ids)
    else:
        class_type = np.unique(train.type_ids).astype(np.int64)
        class_perm = np.zeros(len(class_type), np.int64)
    log.info("%d training classes: %s", len(class_type),
             {train.type_names[t]: int(np.sum(class_type == t)) for t in np.unique(class_type)})
    by_type = {int(t): np.flatnonzero(train.type_ids == t) for t in np.unique(train.type_ids)}
    class_sampler = BatchSampler(np.arange(len(class_type)), cfg.types_per_batch, 1, rng,
                                 class_draw_weights([train.type_names[t] for t in class_type], cfg.type_shares))

    model = build_resnet18()
    if cfg.init_from:
        model.load_state_dict(load_state_dict(cfg.init_from))
        log.info("initialised from %s", cfg.init_from)
    focus = None if cfg.focus_radii is None else focus_mask(cfg.input_size_px, tuple(cfg.focus_radii))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    history: dict = {"config": asdict(cfg), "losses": [], "val": [], "seconds": 0.0}
    start = 0
    ckpt_path = out_dir / "last.pt"
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        rng.bit_generator.state = ckpt["numpy_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        history = ckpt["history"]
        start = ckpt["step"]
        log.info("resumed from %s at step %d", ckpt_path, start)

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0

    saved = {"step": start}

    def checkpoint(step: int) -> None:
        saved["step"] = step
        _save_atomic(
            {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": history, "step": step},
            ckpt_path,
        )
        (out_dir / "history.json").write_text(json.dumps({k: v for k, v in history.items()}, indent=1))

    t0 = time.perf_counter() - history["seconds"]
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="train-embedder")
    done = start
    for step in bar:
        elapsed_s = time.perf_counter() - t0
        if cfg.time_budget_s > 0 and elapsed_s >= cfg.time_budget_s:
            log.info("time budget of %.0f s reached after %d steps", cfg.time_budget_s, step)
            break
        lr = cfg.lr * lr_factor(step, elapsed_s, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        classes = class_sampler()
        idx = np.concatenate([rng.choice(by_type[int(class_type[c])], cfg.crops_per_type,
                                         replace=len(by_type[int(class_type[c])]) < cfg.crops_per_type) for c in classes])
        labels = np.repeat(classes, cfg.crops_per_type)
        sources = [recolour(images[i], int(class_perm[c]), mask) for i, c in zip(idx, labels, strict=True)]
        if fg_masks is not None:
            for j, i in enumerate(idx):
                if rng.random() < cfg.background_swap:
                    if rng.random() < 0.7:
                        background = np.rot90(images[rng.integers(len(images))], rng.integers(4))
                    else:
                        background = np.clip(rng.uniform(0, 255, size=3) + rng.normal(0, 8, size=images.shape[1:]), 0, 255)
                    sources[j] = swap_background(sources[j], fg_masks[i], background)
        views = np.stack([augment(img) for img in sources] + [augment(img) for img in sources])
        x = (torch.from_numpy(views).permute(0, 3, 1, 2).float() - mean) / std
        if focus is not None:
            x = x * focus
        type_labels = torch.from_numpy(np.concatenate([labels, labels]))
        inst_labels = torch.arange(len(idx)).repeat(2)
        z = torch.nn.functional.normalize(model(x), dim=1)
        l_sup = supcon_loss(z, type_labels, cfg.temperature)
        l_inst = supcon_loss(z, inst_labels, cfg.temperature) if cfg.instance_weight > 0 else torch.zeros(())
        loss = l_sup + cfg.instance_weight * l_inst
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        last = done == cfg.steps or (cfg.time_budget_s > 0 and time.perf_counter() - t0 >= cfg.time_budget_s)
        if done % cfg.log_every == 0 or last:
            row = [done, loss.item(), l_sup.item(), l_inst.item(), lr]
            history["losses"].append(row)
            bar.set_postfix(loss=f"{row[1]:.3f}")
            log.info("step %d loss %.4f supcon %.4f instance %.4f lr %.4f", *row)
        if val is not None and cfg.eval_every and (done % cfg.eval_every == 0 or last):
            model.eval()
            embedder = Embedder(model, input_size_px=cfg.input_size_px, focus_radii=cfg.focus_radii)
            aris = grouping_aris(embedder.embed(val.crops), val.type_ids, n_groupings=50, seed=cfg.seed)
            model.train()
            history["val"].append([done, float(np.mean(aris))])
            log.info("step %d held-out grouping ARI %.4f", done, float(np.mean(aris)))
        history["seconds"] = time.perf_counter() - t0
        if done % cfg.checkpoint_every == 0 or last:
            checkpoint(done)
    bar.close()
    if saved["step"] != done:
        checkpoint(done)
    history["steps_done"] = done
    model.eval()
    history["seconds"] = time.perf_counter() - t0
    history["model"] = model.state_dict()
    return history


def export_weights(state_dict: dict, out_path: str | Path, sidecar: dict) -> Path:
    """Write an fp16 ResNet18 ``state_dict`` (no ``fc``) and its JSON sidecar.

    Parameters
    ----------
    state_dict : dict of str to Tensor
        A model from :func:`build_resnet18`, or a training checkpoint's ``"model"``.
    out_path : path
        ``.pt`` file; the sidecar is written beside it with a ``.json`` suffix.
    sidecar : dict
        Recipe, data, seed and metrics; ``format``, ``input_size_px``, ``mean``, ``std``
        and ``embedding_dim`` are filled in when absent.

    Returns
    -------
    Path
        ``out_path``.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    half = {k: (v.half() if v.is_floating_point() else v).clone() for k, v in state_dict.items() if not k.startswith("fc.")}
    torch.save(half, out_path)
    meta = {
        "format": "torchvision resnet18 state_dict without fc, float16 (load into resnet18 with fc = Identity)",
        "input_size_px": 64,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "embedding_dim": EMBEDDING_DIM,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    meta.update(sidecar)
    sidecar_path(out_path).write_text(json.dumps(meta, indent=2) + "\n")
    return out_path
