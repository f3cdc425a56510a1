"""Training of the refine head (:mod:`~sorterbot_cloud.detection.refine_head`) on a frozen detector.

The detector's own first stage gives the boxes; the head learns to move them onto the
true boxes (foreground samples over an IoU bar) and to leave boxes on background alone
(:func:`background_samples`). :func:`train_refine_head` writes a detector file that
carries the trained head.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import boxes as box_ops

from sorterbot_cloud import schedule

from .data import AugmentConfig, MixedSampler, load_coco
from .torchvision_detector import TorchvisionDetector, build_model


def _first_stage_boxes(model, features, proposals, image_sizes) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each proposal regressed by the first stage for its most likely foreground class."""
    heads = model.roi_heads
    logits, regression = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, image_sizes)))
    decoded = heads.box_coder.decode(regression, proposals).reshape(len(logits), -1, 4)
    labels = logits[:, 1:].argmax(1) + 1
    boxes = decoded[torch.arange(len(labels)), labels]
    out = []
    for b, lab, size in zip(boxes.split([len(p) for p in proposals]), labels.split([len(p) for p in proposals]),
                            image_sizes, strict=True):
        out.append((box_ops.clip_boxes_to_image(b, size), lab))
    return out


def training_samples(boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, fg_iou: float,
                     max_samples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes to learn from: first-stage boxes (and the true boxes) overlapping a true box.

    Parameters
    ----------
    boxes : Tensor of shape (N, 4)
        First-stage boxes of one image.
    gt_boxes : Tensor of shape (G, 4); gt_labels : Tensor of shape (G,), int64
    fg_iou : float
        A box is a sample when its IoU with its best true box is at least this.
    max_samples : int
        At most this many, drawn at random.
    generator : torch.Generator

    Returns
    -------
    boxes : Tensor of shape (S, 4)
    matched_gt : Tensor of shape (S, 4)
    labels : Tensor of shape (S,), int64
        The matched true box's label (the regression is class-specific).
    """
    if len(gt_boxes) == 0:
        empty = boxes.new_zeros((0, 4))
        return empty, empty, gt_labels.new_zeros((0,))
    candidates = torch.cat([boxes, gt_boxes])
    iou = box_ops.box_iou(candidates, gt_boxes)
    best_iou, best = iou.max(1)
    keep = torch.nonzero(best_iou >= fg_iou).flatten()
    if len(keep) > max_samples:
        keep = keep[torch.randperm(len(keep), generator=generator)[:max_samples]]
    return candidates[keep], gt_boxes[best[keep]], gt_labels[best[keep]]


def background_samples(boxes: torch.Tensor, labels: torch.Tensor, gt_boxes: torch.Tensor, max_iou: float,
                       max_samples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-stage boxes on no object, taught to stay where they are (zero deltas).

    A box on background has no true box to move to; left untrained, the head moves such
    boxes arbitrarily, which can turn a false detection into a consistent one across
    frames. These samples teach it to leave them.

    Parameters
    ----------
    boxes : Tensor of shape (N, 4); labels : Tensor of shape (N,), int64
        First-stage boxes of one image and their most likely foreground class.
    gt_boxes : Tensor of shape (G, 4)
    max_iou : float
        A box is background when its IoU with every true box is below this.
    max_samples : int
    generator : torch.Generator

    Returns
    -------
    boxes, targets : Tensor of shape (S, 4)
        The targets are the boxes themselves.
    labels : Tensor of shape (S,), int64
    """
    if max_samples <= 0 or len(boxes) == 0:
        empty = boxes.new_zeros((0, 4))
        return empty, empty, labels.new_zeros((0,))
    best = box_ops.box_iou(boxes, gt_boxes).max(1).values if len(gt_boxes) else boxes.new_zeros(len(boxes))
    keep = torch.nonzero(best < max_iou).flatten()
    if len(keep) > max_samples:
        keep = keep[torch.randperm(len(keep), generator=generator)[:max_samples]]
    return boxes[keep], boxes[keep], labels[keep]


def train_refine_head(detector_path: str | Path, datasets: Sequence, out_dir: str | Path, *, fg_iou: float = 0.6,
                      iterations: int = 4000, batch_size: int = 2, lr: float = 2e-4, weight_decay: float = 1e-4,
                      max_samples_per_image: int = 64, crop_px: int = 704, time_budget_min: float | None = None,
                      seed: int = 0, threads: int | None = None, recipe: str | None = None,
                      log_every: int = 20, background_per_image: int = 0, background_iou: float = 0.3) -> Path:
    """Train a :class:`RefineHead` on a frozen detector and write ``out_dir/detector.pt``.

    The first stage (backbone, RPN, box head) runs in inference mode on augmented frames
    (:class:`sorterbot_cloud.detection.data.MixedSampler`); each proposal is regressed by it, and those
    boxes (plus the true boxes) whose IoU with a true box is at least ``fg_iou`` teach
    the refine head to move them onto it (smooth L1 on the deltas of
    :data:`REFINE_BOX_WEIGHTS`, beta 1/9 as torchvision's first stage). AdamW with a
    cosine schedule over ``iterations`` or ``time_budget_min``, whichever ends first.

    Parameters
    ----------
    detector_path : path
        A detector file (``TorchvisionDetector.save``); its weights are not changed.
    datasets : sequence of DatasetSpec
    out_dir : path
        ``detector.pt`` + ``.json`` (the detector with ``refine_head`` set and
        ``box_refine_steps`` 1) and ``refine_log.jsonl`` go here.
    background_per_image : int
        Also up to this many first-stage boxes with IoU under ``background_iou`` with
        every true box per image, taught zero deltas (:func:`background_samples`).

    Returns
    -------
    Path
        ``out_dir/detector.pt``.

    Raises
    ------
    FileNotFoundError
        If the detector or a dataset file is missing.
    FloatingPointError
        On a non-finite loss (the weights written so far are not replaced).
    """

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    first = TorchvisionDetector.load(detector_path)
    config = replace(first.config, refine_head=True, box_refine_steps=1)
    model = build_model(config)
    missing, unexpected = model.load_state_dict(first.model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("refine_head.") for k in missing):
        raise ValueError(f"{detector_path}: weights do not fit the architecture ({missing[:3]}, {unexpected[:3]})")
    if not first.config.refine_head:
        model.refine_head.init_from_first_stage(model.roi_heads.box_head, model.roi_heads.box_predictor.bbox_pred)
    model.eval()
    model.transform.train()  # the sampler's crops are at the model's scale already: no resize
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.refine_head.parameters())
    for p in params:
        p.requires_grad_(True)
    decay = [p for p in params if p.ndim > 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=lr)
    loaded = [(spec, load_coco(spec.annotations, spec.images_dir, None, config.class_names)) for spec in datasets]
    sampler = MixedSampler(loaded, config.min_size_px, AugmentConfig(crop_px=crop_px), seed=seed)
    batches = sampler.batches(batch_size)
    generator = torch.Generator().manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "refine_log.jsonl"
    t0 = time.time()
    it, window = 0, []
    while True:
        progress = schedule.progress(it, iterations, time.time() - t0, 60.0 * time_budget_min if time_budget_min else None)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * schedule.lr_factor(it, progress, warmup_steps=0)
        images, targets = next(batches)
        with torch.no_grad():
            image_list, targets = model.transform(images, targets)
            features = model.backbone(image_list.tensors)
            proposals, _ = model.rpn(image_list, features)
            stage1 = _first_stage_boxes(model, features, proposals, image_list.image_sizes)
            boxes, matched, labels = [], [], []
            for (b, lab), t in zip(stage1, targets, strict=True):
                wide = ((b[:, 2] - b[:, 0]) >= 1.0) & ((b[:, 3] - b[:, 1]) >= 1.0)  # no log(0) in the deltas
                b, lab = b[wide], lab[wide]
                s = training_samples(b, t["boxes"], t["labels"], fg_iou, max_samples_per_image, generator)
                bg = background_samples(b, lab, t["boxes"], background_iou, background_per_image, generator)
                boxes.append(torch.cat([s[0], bg[0]]))
                matched.append(torch.cat([s[1], bg[1]]))
                labels.append(torch.cat([s[2], bg[2]]))
            n = sum(len(b) for b in boxes)
            if n == 0:
                continue
            pooled = model.roi_heads.box_roi_pool(features, boxes, image_list.image_sizes)
            target_deltas = model.refine_head.box_coder.encode(matched, boxes)
            target_deltas = torch.cat(target_deltas) if isinstance(target_deltas, (list, tuple)) else target_deltas
            flat_labels = torch.cat(labels)
        deltas = model.refine_head(pooled).reshape(n, -1, 4)[torch.arange(n), flat_labels]
        loss = nn.functional.smooth_l1_loss(deltas, target_deltas, beta=1 / 9, reduction="sum") / n
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite refine loss at iteration {it}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        it += 1
        window.append((float(loss.detach()), n))
        if it % log_every == 0:
            row = {"iteration": it, "loss": round(float(np.mean([w[0] for w in window])), 5),
                   "samples_per_image": round(float(np.mean([w[1] for w in window])) / batch_size, 1),
                   "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(time.time() - t0, 1)}
            with log_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            window = []
    model.eval()
    metadata = dict(first.metadata)
    metadata["refine_head"] = {
        "recipe": recipe, "first_stage": str(detector_path), "fg_iou": fg_iou, "iterations": it, "batch_size": batch_size,
        "lr": lr, "crop_px": crop_px, "seed": seed, "train_time_s": round(time.time() - t0, 1),
        "background_per_image": background_per_image, "background_iou": background_iou,
        "data": [{"annotations": str(s.annotations), "weight": s.weight} for s, _ in loaded],
    }
    return TorchvisionDetector(model, config, "cpu", metadata).save(out_dir / "detector.pt", metadata)
