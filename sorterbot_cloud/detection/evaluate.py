"""Detection metrics: COCO AP (pycocotools), operating-point precision / recall / F1, confusion matrix.

The metrics are the ones of the CAD-synthetic-data study SorterBot learns from
(docs/design.rst, Evaluation protocol): AP at IoU 0.5 per class and COCO mAP@[.5:.95]
(pycocotools ``COCOeval``, 101-point interpolated precision), and at the operating
score threshold precision, recall and F1 per class plus a confusion matrix whose last
row and column are background (missed objects and false detections).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from sorterbot_cloud.imaging import read_image_file
from sorterbot_cloud.structures import CLASS_NAMES, Detections, pairwise_iou

from .data import Record


def _coco_dicts(records: Sequence[Record], predictions: Sequence[Detections], class_names: Sequence[str]):
    images, gts, dets = [], [], []
    for rec, pred in zip(records, predictions, strict=False):
        images.append({"id": rec.image_id, "width": rec.width_px, "height": rec.height_px})
        for box, c in zip(rec.boxes_xyxy, rec.class_ids, strict=False):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            gts.append({"id": len(gts) + 1, "image_id": rec.image_id, "category_id": int(c) + 1,
                        "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0})
        for box, s, c in zip(pred.boxes_xyxy, pred.scores, pred.class_ids, strict=False):
            dets.append({"image_id": rec.image_id, "category_id": int(c) + 1, "score": float(s),
                         "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": gts, "categories": cats}, dets


def coco_ap(records: Sequence[Record], predictions: Sequence[Detections],
            class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """COCO AP with pycocotools.

    Parameters
    ----------
    records : sequence of Record
        Ground truth; ``image_id`` must be unique.
    predictions : sequence of Detections
        One per record, boxes in the record's pixels; keep low-score detections (down to
        ~0.01) for a faithful AP.
    class_names : sequence of str

    Returns
    -------
    dict
        ``ap50_per_class`` {name: float or None (no ground truth)}, ``ap50_mean``,
        ``map`` (AP@[.5:.95], all classes), ``pr_curves`` {name: {"recall": [...],
        "precision": [...]}} at IoU 0.5 (101 recall points).

    Raises
    ------
    ValueError
        If ``records`` and ``predictions`` differ in length.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(records) != len(predictions):
        raise ValueError(f"need one prediction per record, got {len(predictions)} for {len(records)}")
    gt_dict, dets = _coco_dicts(records, predictions, class_names)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        if not dets:
            return {"ap50_per_class": {n: (0.0 if any(int(c) == i for r in records for c in r.class_ids) else None)
                                       for i, n in enumerate(class_names)},
                    "ap50_mean": 0.0, "map": 0.0,
                    "pr_curves": {n: {"recall": [], "precision": []} for n in class_names}}
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T=10 IoUs, R=101 recalls, K classes, A=4 areas, M=3 maxDets]
    recall_points = ev.params.recThrs
    ap50, curves = {}, {}
    for k, name in enumerate(class_names):
        p = precision[0, :, k, 0, -1]
        valid = p > -1
        ap50[name] = float(p[valid].mean()) if valid.any() else None
        curves[name] = {"recall": recall_points[valid].tolist(), "precision": p[valid].tolist()}
    values = [v for v in ap50.values() if v is not None]
    return {"ap50_per_class": ap50, "ap50_mean": float(np.mean(values)) if values else 0.0,
            "map": float(max(ev.stats[0], 0.0)), "pr_curves": curves}


def confusion_at_threshold(records: Sequence[Record], predictions: Sequence[Detections], score_threshold: float,
                           iou_threshold: float = 0.5, class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Confusion matrix with background, and precision / recall / F1 per class at one threshold.

    Detections with ``score >= score_threshold`` are matched greedily, highest score
    first, to the not yet matched ground-truth box of highest IoU (any class) if that
    IoU is >= ``iou_threshold``. Matrix rows are the true class, columns the predicted
    class; the last row / column is background: an unmatched ground-truth box counts in
    (its class, background), an unmatched detection in (background, its class).

    Returns
    -------
    dict
        ``confusion_matrix`` (C+1, C+1) int list, ``labels`` (class names + background),
        ``per_class`` {name: {precision, recall, f1, tp, fp, fn}}, and micro-averaged
        ``precision``, ``recall``, ``f1``. A ratio with a zero denominator is 0.
    """
    c = len(class_names)
    cm = np.zeros((c + 1, c + 1), dtype=np.int64)
    for rec, pred in zip(records, predictions, strict=False):
        keep = pred.scores >= score_threshold
        boxes, scores, cls = pred.boxes_xyxy[keep], pred.scores[keep], pred.class_ids[keep]
        order = np.argsort(-scores, kind="stable")
        iou = pairwise_iou(boxes, rec.boxes_xyxy)
        matched = np.zeros(len(rec.boxes_xyxy), bool)
        for d in order:
            cand = np.where(~matched, iou[d], -1.0) if len(rec.boxes_xyxy) else np.zeros(0)
            g = int(np.argmax(cand)) if len(cand) else -1
            if g >= 0 and cand[g] >= iou_threshold:
                matched[g] = True
                cm[int(rec.class_ids[g]), int(cls[d])] += 1
            else:
                cm[c, int(cls[d])] += 1
        for g in np.where(~matched)[0]:
            cm[int(rec.class_ids[g]), c] += 1

    def ratio(a, b):
        return float(a / b) if b else 0.0

    per_class = {}
    for k, name in enumerate(class_names):
        tp = int(cm[k, k])
        fp = int(cm[:, k].sum() - tp)
        fn = int(cm[k, :].sum() - tp)
        p, r = ratio(tp, tp + fp), ratio(tp, tp + fn)
        per_class[name] = {"precision": p, "recall": r, "f1": ratio(2 * p * r, p + r), "tp": tp, "fp": fp, "fn": fn}
    tp = sum(v["tp"] for v in per_class.values())
    fp = sum(v["fp"] for v in per_class.values())
    fn = sum(v["fn"] for v in per_class.values())
    p, r = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"confusion_matrix": cm.tolist(), "labels": list(class_names) + ["background"], "per_class": per_class,
            "precision": p, "recall": r, "f1": ratio(2 * p * r, p + r), "score_threshold": float(score_threshold),
            "iou_threshold": float(iou_threshold)}


#: Score thresholds at which :func:`recall_margins` counts the ground-truth boxes found.
MARGIN_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


def recall_margins(records: Sequence[Record], predictions: Sequence[Detections],
                   class_names: Sequence[str] = CLASS_NAMES, iou_threshold: float = 0.5,
                   thresholds: Sequence[float] = MARGIN_THRESHOLDS, n_lowest: int = 10) -> dict:
    """How far above the operating threshold each ground-truth box is found.

    A recall counted at one threshold hides how close it came: on a small test set a
    box found at score 0.58 against a threshold of 0.5 and one found at 0.99 count alike,
    yet the first is lost by a slight change of weights. For every ground-truth box this
    takes the highest score of any detection of the same class whose IoU with it is at
    least ``iou_threshold`` (0.0 when there is none; one detection may serve two
    ground-truth boxes, unlike the one-to-one matching of :func:`confusion_at_threshold`,
    so the counts are an upper bound on that recall).

    Parameters
    ----------
    records, predictions : sequence of Record, sequence of Detections
        Same length and order; predictions should keep low scores.
    class_names : sequence of str
    iou_threshold : float
    thresholds : sequence of float
        Scores at which the boxes found are counted.
    n_lowest : int
        How many of the lowest best scores to list per class.

    Returns
    -------
    dict
        Per class name: ``n`` (ground-truth boxes), ``found_at`` {threshold as str: boxes
        whose best score is at least that}, ``lowest_best_scores`` (ascending, at most
        ``n_lowest``, rounded to 3 decimals). Classes without ground-truth boxes are left out.

    Raises
    ------
    ValueError
        If ``records`` and ``predictions`` differ in length.
    """
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    best = {k: [] for k in range(len(class_names))}
    for rec, pred in zip(records, predictions, strict=True):
        boxes, scores, cls = np.asarray(pred.boxes_xyxy), np.asarray(pred.scores), np.asarray(pred.class_ids)
        iou = pairwise_iou(rec.boxes_xyxy, boxes)  # (G, D); empty sides give empty arrays
        for g, k in enumerate(np.asarray(rec.class_ids, np.int64)):
            hit = (iou[g] >= iou_threshold) & (cls == k)
            best[int(k)].append(float(scores[hit].max()) if hit.any() else 0.0)
    out = {}
    for k, name in enumerate(class_names):
        values = np.sort(np.asarray(best[k], np.float64))
        if not len(values):
            continue
        out[name] = {"n": int(len(values)),
                     "found_at": {f"{t:g}": int(np.count_nonzero(values >= t)) for t in thresholds},
                     "lowest_best_scores": [round(float(v), 3) for v in values[:n_lowest]]}
    return out


def box_side_errors(records: Sequence[Record], predictions: Sequence[Detections], score_threshold: float,
                    class_names: Sequence[str] = CLASS_NAMES, iou_threshold: float = 0.5,
                    border_px: float = 3.0) -> dict:
    """How tight the boxes are: absolute error of each box side on matched detections.

    Each true box is matched to the detection of its class, at or above the score
    threshold, that overlaps it most (IoU >= ``iou_threshold``). A side of a true box
    within ``border_px`` of the image border is left out (the border, not the detector,
    decides where it ends).

    Parameters
    ----------
    records : sequence of Record
    predictions : sequence of Detections
        In the records' pixels, one per record.
    score_threshold, iou_threshold, border_px : float

    Returns
    -------
    dict
        Per class name: ``n`` matched boxes, ``mean_abs_px`` and ``p90_abs_px`` over all
        sides used, ``mean_abs_px_per_side`` (x0, y0, x1, y1) and ``mean_abs_rel``
        (side errors divided by the true box's width or height).
    """
    errors: dict[int, list] = {k: [] for k in range(len(class_names))}
    relative: dict[int, list] = {k: [] for k in range(len(class_names))}
    for rec, det in zip(records, predictions, strict=True):
        keep = det.scores >= score_threshold
        boxes, class_ids = det.boxes_xyxy[keep], det.class_ids[keep]
        for gt, c in zip(rec.boxes_xyxy, rec.class_ids, strict=True):
            cand = np.flatnonzero(class_ids == c)
            if not len(cand):
                continue
            iou = pairwise_iou(gt, boxes[cand])
            if iou.max() < iou_threshold:
                continue
            err = boxes[cand[int(np.argmax(iou))]] - gt
            inner = np.array([gt[0] > border_px, gt[1] > border_px, gt[2] < rec.width_px - border_px,
                              gt[3] < rec.height_px - border_px])
            extent = np.array([gt[2] - gt[0], gt[3] - gt[1]] * 2, dtype=np.float64)
            errors[int(c)].append(np.where(inner, np.abs(err), np.nan))
            relative[int(c)].append(np.where(inner, np.abs(err) / np.maximum(extent, 1.0), np.nan))
    out = {}
    for k, name in enumerate(class_names):
        e = np.array(errors[k], dtype=np.float64).reshape(-1, 4)
        used = e[~np.isnan(e)]
        out[name] = {
            "n": int(len(e)),
            "mean_abs_px": float(used.mean()) if used.size else None,
            "p90_abs_px": float(np.percentile(used, 90)) if used.size else None,
            "mean_abs_px_per_side": [float(side[~np.isnan(side)].mean()) if (~np.isnan(side)).any() else None
                                     for side in e.T] if used.size else None,
            "mean_abs_rel": float(np.nanmean(np.array(relative[k], dtype=np.float64))) if used.size else None,
        }
    return out


def box_errors_by_type(records: Sequence[Record], predictions: Sequence[Detections], score_threshold: float,
                       iou_threshold: float = 0.5, border_px: float = 3.0) -> dict:
    """How well each object type is boxed: IoU and box extent of matched detections, per type.

    A detector can box one kind of object too short (the top face of a cube cut off, say)
    while its average side error looks fine; the session trigger reads an item's height
    and size from its boxes, so such a bias moves items of one kind towards another.
    Matching is that of :func:`box_side_errors` (the same-class detection at or above
    ``score_threshold`` overlapping the true box most, IoU >= ``iou_threshold``).

    Parameters
    ----------
    records : sequence of Record
        With ``object_types`` (records without are skipped).
    predictions : sequence of Detections
        In the records' pixels, one per record.
    score_threshold, iou_threshold, border_px : float
        A box with a side within ``border_px`` of the image border counts for IoU and
        recall but not for the extent ratios (the border cut it, not the detector).

    Returns
    -------
    dict
        Per type name, sorted: ``n`` true boxes, ``matched``, ``iou_median``,
        ``height_ratio_median`` and ``height_ratio_p10`` (detected over true box height),
        ``width_ratio_median``, and ``n_inner`` boxes those ratios are taken over; None
        where nothing was matched.
    """
    return _box_errors(records, predictions, score_threshold, lambda rec, name, class_id: name, iou_threshold, border_px)


def box_errors_by_texture(records: Sequence[Record], predictions: Sequence[Detections], score_threshold: float,
                          class_names: Sequence[str] = CLASS_NAMES, iou_threshold: float = 0.5,
                          border_px: float = 3.0) -> dict:
    """:func:`box_errors_by_type` grouped by the frame's table texture and the box's class instead.

    White and grey objects on a near-white table have little contrast; a detector that
    never saw such tables boxes them short on those frames only, which per-type figures
    pooled over all tables hide.

    Parameters
    ----------
    records : sequence of Record
        With ``texture`` and ``object_types`` (records without either are skipped).
    predictions : sequence of Detections
    score_threshold, iou_threshold, border_px : float
        As for :func:`box_errors_by_type`.
    class_names : sequence of str

    Returns
    -------
    dict
        Per ``"<texture>/<class name>"``, sorted, the fields of :func:`box_errors_by_type`.
    """
    return _box_errors(records, predictions, score_threshold,
                       lambda rec, name, class_id: None if rec.texture is None else f"{rec.texture}/{class_names[int(class_id)]}",
                       iou_threshold, border_px)


def _box_errors(records, predictions, score_threshold, key, iou_threshold, border_px) -> dict:
    """IoU and extent ratios of matched detections, grouped by ``key(record, type name, class id)``."""
    rows: dict[str, list] = {}
    for rec, det in zip(records, predictions, strict=True):
        if not rec.object_types:
            continue
        keep = det.scores >= score_threshold
        boxes, class_ids = det.boxes_xyxy[keep], det.class_ids[keep]
        for gt, c, name in zip(rec.boxes_xyxy, rec.class_ids, rec.object_types, strict=True):
            group = None if name is None else key(rec, name, c)
            if group is None:
                continue
            entry = rows.setdefault(group, [])
            cand = np.flatnonzero(class_ids == c)
            iou = pairwise_iou(gt, boxes[cand]) if len(cand) else np.zeros(1)
            if iou.max() < iou_threshold:
                entry.append((np.nan, np.nan, np.nan))
                continue
            box = boxes[cand[int(np.argmax(iou))]]
            inner = (gt[0] > border_px and gt[1] > border_px and gt[2] < rec.width_px - border_px
                     and gt[3] < rec.height_px - border_px)
            h = (box[3] - box[1]) / max(gt[3] - gt[1], 1.0) if inner else np.nan
            w = (box[2] - box[0]) / max(gt[2] - gt[0], 1.0) if inner else np.nan
            entry.append((float(iou.max()), float(h), float(w)))
    out = {}
    for name in sorted(rows):
        a = np.asarray(rows[name], dtype=np.float64).reshape(-1, 3)
        iou, h, w = a[~np.isnan(a[:, 0])].T if (~np.isnan(a[:, 0])).any() else (np.empty(0),) * 3
        inner_h, inner_w = h[~np.isnan(h)], w[~np.isnan(w)]
        out[name] = {
            "n": int(len(a)), "matched": int(len(iou)), "n_inner": int(len(inner_h)),
            "iou_median": float(np.median(iou)) if len(iou) else None,
            "height_ratio_median": float(np.median(inner_h)) if len(inner_h) else None,
            "height_ratio_p10": float(np.percentile(inner_h, 10)) if len(inner_h) else None,
            "width_ratio_median": float(np.median(inner_w)) if len(inner_w) else None,
        }
    return out


def predict_records(detector, records: Sequence[Record], progress: bool = False) -> list[Detections]:
    """Run ``detector.detect`` on the image of every record (boxes rescaled if the file's size differs)."""
    from tqdm import tqdm

    out = []
    for rec in tqdm(records, disable=not progress, desc="detect", dynamic_ncols=True):
        image = read_image_file(rec.path)
        det = detector.detect(image)
        sx, sy = rec.width_px / image.shape[1], rec.height_px / image.shape[0]
        if (sx, sy) != (1.0, 1.0):
            det = Detections(det.boxes_xyxy * np.float32([sx, sy, sx, sy]), det.scores, det.class_ids)
        out.append(det)
    return out


def evaluate_records(detector, records: Sequence[Record], class_names: Sequence[str] = CLASS_NAMES,
                     score_threshold: float = 0.5, progress: bool = False) -> dict:
    """Predict on ``records`` (the detector should keep low scores) and compute all metrics.

    Returns
    -------
    dict
        :func:`coco_ap` keys plus ``operating_point`` (:func:`confusion_at_threshold`),
        ``box_side_errors`` (:func:`box_side_errors`), ``box_errors_by_type``
        (:func:`box_errors_by_type`; empty when the dataset names no object types),
        ``box_errors_by_texture`` (:func:`box_errors_by_texture`; empty without textures),
        ``recall_margins`` (:func:`recall_margins`) and ``images``.
    """
    predictions = predict_records(detector, records, progress=progress)
    metrics = coco_ap(records, predictions, class_names)
    metrics["operating_point"] = confusion_at_threshold(records, predictions, score_threshold,
                                                        class_names=class_names)
    metrics["box_side_errors"] = box_side_errors(records, predictions, score_threshold, class_names)
    metrics["box_errors_by_type"] = box_errors_by_type(records, predictions, score_threshold)
    metrics["box_errors_by_texture"] = box_errors_by_texture(records, predictions, score_threshold, class_names)
    metrics["recall_margins"] = recall_margins(records, predictions, class_names)
    metrics["images"] = len(records)
    metrics["objects"] = {n: int(sum(int((r.class_ids == k).sum()) for r in records))
                          for k, n in enumerate(class_names)}
    return metrics


def write_report(metrics: dict, out_dir: str | Path, title: str = "") -> dict:
    """Write ``metrics.json``, ``pr_curve.png`` and ``confusion_matrix.png`` into ``out_dir``.

    Returns
    -------
    dict
        Paths written, by name.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out_dir / "metrics.json", "pr_curve": out_dir / "pr_curve.png",
             "confusion_matrix": out_dir / "confusion_matrix.png"}
    paths["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")

    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    for name, curve in metrics["pr_curves"].items():
        ap = metrics["ap50_per_class"].get(name)
        if curve["recall"]:
            ax.plot(curve["recall"], curve["precision"], label=f"{name} (AP50 {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"PR at IoU 0.5 {title}".strip())
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(paths["pr_curve"])
    plt.close(fig)

    op = metrics["operating_point"]
    cm = np.asarray(op["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=110)
    ax.imshow(cm, cmap="Blues")
    labels = op["labels"]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true",
           title=f"score >= {op['score_threshold']:.2f}, IoU >= {op['iou_threshold']:.1f} {title}".strip())
    fig.tight_layout()
    fig.savefig(paths["confusion_matrix"])
    plt.close(fig)
    return {k: str(v) for k, v in paths.items()}
