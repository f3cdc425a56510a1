"""Teach the detector a new table: fine-tune the shipped weights on a few labelled frames.

A user labels a handful of their own frames (labelImg, Pascal VOC; or COCO) and runs
``sorterbot-cloud adapt-detector``. Within a time budget this

1. holds out part of the frames to measure on: k-fold cross-validation when there are
   20 or fewer (every frame is scored once, by a model that never saw it), one split
   otherwise;
2. fine-tunes the given detector (all layers, a short cosine schedule at a low learning
   rate, :func:`sorterbot_cloud.detection.train.train`) on the labelled frames plus cut-paste frames made
   from their own items: each labelled item is cut out (GrabCut) and pasted onto other
   backgrounds, their own frames' empty regions among them (:mod:`sorterbot_cloud.detection.copy_paste`),
   so that a few frames give many layouts, scales and lights;
3. reports AP50 before and after on the held-out frames, and writes the detector trained
   on the frames it may use (all of them after k-fold; the training part after one split).

Why these choices: fine-tuning a detector pre-trained on related data needs far fewer
labelled frames than training one (the CAD-synthetic-data finding docs/design.rst refers to:
synthetic plus a few real frames beats either alone), and copy-paste augmentation is
among the strongest augmentations for few-shot detection (Dwibedi et al. 2017; Ghiasi et
al., "Simple Copy-Paste is a Strong Data Augmentation Method", CVPR 2021).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from sorterbot_cloud.evaluation import fold_indices

from .data import AugmentConfig, DatasetSpec, Record

#: Frames at or below which the held-out measurement is k-fold.
KFOLD_MAX_FRAMES = 20


@dataclass(frozen=True)
class AdaptConfig:
    """Settings of :func:`adapt_detector`.

    Parameters
    ----------
    time_budget_min : float
        Wall-clock budget of all training (minutes); evaluation and data preparation
        come on top (about a second a frame).
    folds : int or None
        Held-out folds; None: 3 when there are at most :data:`KFOLD_MAX_FRAMES` frames,
        else 1 (one split of ``holdout_fraction``). 0 holds nothing out (no report).
    holdout_fraction : float
        Share of frames held out by a single split.
    fold_budget_share : float
        Share of the budget that the k fold models get together (k-fold only); the
        final model on all frames gets the rest.
    lr : float
        Peak AdamW learning rate of the fine-tune.
    warmup_iterations : int
    batch_size : int
    crop_px : int
        Random crop side, model-input pixels.
    scale_jitter : tuple of float
        Log-uniform scale factor range of the training augmentation.
    synth_frames_per_frame : int
        Cut-paste frames composed per labelled training frame (at most ``synth_frames_max``).
    synth_frames_max : int
    synth_weight : float
        Sampling weight of the cut-paste frames against the labelled frames (1.0).
    seed : int
    threads : int or None
        torch threads (None: one per core).
    """

    time_budget_min: float = 15.0
    folds: int | None = None
    holdout_fraction: float = 0.25
    fold_budget_share: float = 0.4
    lr: float = 3e-4
    warmup_iterations: int = 20
    batch_size: int = 2
    crop_px: int = 704
    scale_jitter: tuple = (0.5, 1.6)
    synth_frames_per_frame: int = 25
    synth_frames_max: int = 400
    synth_weight: float = 1.0
    seed: int = 0
    threads: int | None = None


@dataclass
class AdaptReport:
    """What :func:`adapt_detector` measured and wrote.

    Attributes
    ----------
    frames : int
        Labelled frames given.
    folds : int
        Held-out folds used (0: none).
    heldout_frames : int
        Frames scored (all of them after k-fold).
    ap50_before, ap50_after : dict
        AP50 per class on the held-out frames (None for a class with no true box there):
        the starting weights, and the fine-tuned model(s) that did not see those frames.
    recall_before, recall_after, precision_before, precision_after : float or None
        At the model's operating score threshold, IoU 0.5, all classes.
    weights : str
        The detector file written.
    train_time_s : float
    """

    frames: int
    folds: int
    heldout_frames: int
    ap50_before: dict = field(default_factory=dict)
    ap50_after: dict = field(default_factory=dict)
    recall_before: float | None = None
    recall_after: float | None = None
    precision_before: float | None = None
    precision_after: float | None = None
    weights: str = ""
    train_time_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def records_to_coco(records: Sequence[Record], out_json: str | Path, class_names: Sequence[str]) -> DatasetSpec:
    """Write ``records`` as a COCO file with absolute image paths; returns its DatasetSpec (weight 1)."""
    images, annotations = [], []
    for i, rec in enumerate(records, start=1):
        images.append({"id": i, "file_name": str(Path(rec.path).resolve()), "width": rec.width_px,
                       "height": rec.height_px})
        for box, c in zip(rec.boxes_xyxy, rec.class_ids, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(coco))
    return DatasetSpec(out_json, Path("/"), 1.0, None)


def _predict(weights: Path, records: Sequence[Record]) -> list:
    """Detections of ``weights`` on ``records``, scores down to 0.01 (for AP)."""
    from .evaluate import predict_records
    from .torchvision_detector import TorchvisionDetector

    return predict_records(TorchvisionDetector.load(weights, fuse=True, score_threshold=0.01), records)


def _score(records, predictions, class_names, score_threshold) -> dict:
    from .evaluate import coco_ap, confusion_at_threshold

    ap = coco_ap(records, predictions, class_names)
    op = confusion_at_threshold(records, predictions, score_threshold, class_names=class_names)
    return {"ap50": ap["ap50_per_class"], "recall": op["recall"], "precision": op["precision"]}


def _renumbered(records: Sequence[Record]) -> list[Record]:
    return [replace(r, image_id=i + 1) for i, r in enumerate(records)]


def adapt_detector(records: Sequence[Record], base_weights: str | Path, out_dir: str | Path,
                   config: AdaptConfig | None = None, log=print) -> AdaptReport:
    """Fine-tune ``base_weights`` on labelled frames, measure it on held-out ones, write the result.

    Parameters
    ----------
    records : sequence of Record
        The user's labelled frames (:func:`sorterbot_cloud.detection.data.load_coco` or
        :func:`sorterbot_cloud.detection.data.voc_to_coco`); at least 2 (at least 3 to hold some out).
    base_weights : path
        Detector file to start from (the shipped ``weights/detector.pt``).
    out_dir : path
        Gets ``detector.pt`` with its JSON sidecar (the report under ``metrics.adapt``),
        ``report.json`` and a ``work/`` folder of the runs (removed at the end).
    config : AdaptConfig, optional
    log : callable
        Receives one line of progress at a time.

    Returns
    -------
    AdaptReport

    Raises
    ------
    ValueError
        If there are too few frames, or none holds a box.
    FileNotFoundError
        If ``base_weights`` does not exist.
    """
    import torch

    from .copy_paste import cutouts_from_records, write_dataset
    from .torchvision_detector import TorchvisionDetector
    from .train import DetectorTrainConfig, train

    cfg = config or AdaptConfig()
    base_weights = Path(base_weights)
    if not base_weights.is_file():
        raise FileNotFoundError(f"detector weights not found: {base_weights}")
    records = _renumbered(records)
    n = len(records)
    if n < 2:
        raise ValueError(f"adapting needs at least 2 labelled frames, got {n}")
    if not any(len(r.boxes_xyxy) for r in records):
        raise ValueError("none of the labelled frames holds a box")
    folds = cfg.folds if cfg.folds is not None else (min(3, n) if n <= KFOLD_MAX_FRAMES else 1)
    if folds >= 2 and n < 3:
        folds = 0
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out_dir = Path(out_dir)
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    dc = TorchvisionDetector._peek_config(base_weights)
    class_names = dc.class_names
    t_start = time.time()
    log(f"{n} labelled frames, {sum(len(r.boxes_xyxy) for r in records)} boxes; "
        f"{'k-fold with %d folds' % folds if folds >= 2 else ('one held-out split' if folds == 1 else 'nothing held out')}")
    log("cutting out the labelled items (GrabCut) ...")
    cut_by_frame = {r.image_id: cutouts_from_records([r], seed=cfg.seed, min_side_px=12) for r in records}

    def run(name: str, train_records: Sequence[Record], budget_min: float, seed: int) -> Path:
        run_dir = work / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        specs = [records_to_coco(train_records, run_dir / "labelled.json", class_names)]
        cutouts = [c for r in train_records for c in cut_by_frame[r.image_id]]
        n_synth = min(cfg.synth_frames_max, cfg.synth_frames_per_frame * len(train_records))
        if cutouts and n_synth:
            write_dataset(run_dir / "synth", n_synth, cutouts, seed=seed, real_records=train_records,
                          n_items=(1, 6))
            specs.append(DatasetSpec(run_dir / "synth" / "annotations.json", run_dir / "synth", cfg.synth_weight, None))
        spent = (time.time() - t_start) / 60.0
        log(f"{name}: fine-tuning on {len(train_records)} frames + {n_synth if cutouts else 0} cut-paste frames "
            f"for {budget_min:.1f} min ({spent:.1f} min spent so far)")
        tc = DetectorTrainConfig(iterations=1_000_000, batch_size=cfg.batch_size, lr=cfg.lr,
                         warmup_iterations=cfg.warmup_iterations, checkpoint_every=10_000_000, log_every=10,
                         time_budget_min=budget_min, seed=seed, threads=cfg.threads)
        ac = AugmentConfig(crop_px=cfg.crop_px, scale_jitter=tuple(cfg.scale_jitter))
        return train(specs, run_dir / "run", train_config=tc, augment_config=ac, init_from=base_weights,
                     recipe=f"adapt-detector {name}", progress=False)

    before_preds: list = [None] * n
    after_preds: list = [None] * n
    scored: list[int] = []
    if folds >= 2:
        parts = fold_indices(n, folds, cfg.seed)
        fold_budget = cfg.time_budget_min * cfg.fold_budget_share / folds
        final_budget = cfg.time_budget_min * (1 - cfg.fold_budget_share)
        before_preds = _predict(base_weights, records)
        for k, held in enumerate(parts):
            held_set = set(held.tolist())
            keep = [records[i] for i in range(n) if i not in held_set]
            weights = run(f"fold{k}", keep, fold_budget, cfg.seed + 1 + k)
            preds = _predict(weights, [records[i] for i in held])
            for i, p in zip(held, preds, strict=True):
                after_preds[int(i)] = p
        scored = list(range(n))
        final = run("final", records, final_budget, cfg.seed)
    elif folds == 1:
        held = np.sort(np.random.default_rng(cfg.seed).permutation(n)[:max(1, int(round(cfg.holdout_fraction * n)))])
        held_set = set(held.tolist())
        train_records = [records[i] for i in range(n) if i not in held_set]
        final = run("final", train_records, cfg.time_budget_min, cfg.seed)
        held_records = [records[i] for i in held]
        base = _predict(base_weights, held_records)
        after = _predict(final, held_records)
        for i, b, a in zip(held, base, after, strict=True):
            before_preds[int(i)], after_preds[int(i)] = b, a
        scored = [int(i) for i in held]
    else:
        final = run("final", records, cfg.time_budget_min, cfg.seed)
    train_time_s = time.time() - t_start

    report = AdaptReport(frames=n, folds=folds, heldout_frames=len(scored), train_time_s=round(train_time_s, 1))
    if scored:
        held_records = [records[i] for i in scored]
        b = _score(held_records, [before_preds[i] for i in scored], class_names, dc.score_threshold)
        a = _score(held_records, [after_preds[i] for i in scored], class_names, dc.score_threshold)
        report.ap50_before, report.ap50_after = b["ap50"], a["ap50"]
        report.recall_before, report.recall_after = b["recall"], a["recall"]
        report.precision_before, report.precision_after = b["precision"], a["precision"]
    out_path = out_dir / "detector.pt"
    shutil.copyfile(final, out_path)
    meta = json.loads(Path(final).with_suffix(".json").read_text())
    meta["adapted_from"] = str(base_weights)
    meta.setdefault("metrics", {})["adapt"] = report.to_dict() | {"config": asdict(cfg)}
    report.weights = str(out_path)
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return report


def format_report(report: AdaptReport) -> str:
    """The report as a few lines of text (what ``adapt-detector`` prints)."""
    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = [f"frames: {report.frames}, held out: {report.heldout_frames} "
             f"({'%d-fold' % report.folds if report.folds >= 2 else ('one split' if report.folds == 1 else 'none')})"]
    for name in report.ap50_before:
        lines.append(f"AP50 {name}: before {fmt(report.ap50_before[name])}  after {fmt(report.ap50_after.get(name))}")
    if report.heldout_frames:
        lines.append(f"recall: before {fmt(report.recall_before)}  after {fmt(report.recall_after)}; "
                     f"precision: before {fmt(report.precision_before)}  after {fmt(report.precision_after)}")
    lines.append(f"wrote {report.weights} (use it with DETECTOR_WEIGHTS={report.weights}); "
                 f"{report.train_time_s / 60:.1f} min")
    return "\n".join(lines)
