"""Click commands of the detector: ``train-detector``, ``train-refine-head``, ``evaluate-detector``, ``bench-detector``,
``export-detector``, ``convert-voc``, ``merge-coco``, ``average-detectors``, ``synth-frames`` and ``adapt-detector`` (attached lazily by ``sorterbot_cloud/cli.py``)."""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import click

from sorterbot_cloud.config import Settings

_DATASET_HELP = ("COCO dataset 'annotations.json:images_dir[:weight[:scale]]'; repeat to mix datasets by weight. "
                 "scale = factor from the dataset's pixels to model-input pixels (default: the model's own resize).")


def _recipe() -> str:
    return "sorterbot-cloud " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@click.command("train-detector")
@click.option("--dataset", "datasets", multiple=True, required=True, help=_DATASET_HELP)
@click.option("--class-map", multiple=True, help="'source=item|container|ignore', repeatable.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--steps", "--iterations", "iterations", type=int, default=2000, show_default=True,
              help="Optimiser steps of the schedule (at most, with --time-budget-min).")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak AdamW learning rate.")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--warmup-steps", "--warmup", "warmup", type=int, default=200, show_default=True, help="Warm-up steps.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True)
@click.option("--log-every", type=int, default=10, show_default=True)
@click.option("--val-dataset", default=None, help="COCO 'annotations.json:images_dir' validated during training.")
@click.option("--val-every", type=int, default=0, show_default=True)
@click.option("--val-max-images", type=int, default=60, show_default=True)
@click.option("--time-budget-min", type=float, default=None,
              help="Stop (and finish the LR schedule) after this many minutes of training.")
@click.option("--crop-px", type=int, default=512, show_default=True, help="Random crop side, model-input pixels.")
@click.option("--scale-jitter", type=(float, float), default=(0.75, 1.33), show_default=True)
@click.option("--backbone", default="mobilenet_v3_large", show_default=True)
@click.option("--fpn-channels", type=int, default=128, show_default=True)
@click.option("--box-head-units", type=int, default=256, show_default=True)
@click.option("--min-size-px", type=int, default=Settings.detector_min_size_px, show_default=True,
              help="Input short side (the service's detector_min_size_px).")
@click.option("--max-size-px", type=int, default=864, show_default=True, help="Input long-side cap.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="torch.set_num_threads on CPU.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint_last.pt.")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Warm restart: model weights and detector config from this checkpoint, fresh optimiser and schedule.")
@click.option("--train-only", "train_only", multiple=True,
              help="Train only the parameters under this name prefix (e.g. 'roi_heads.box_predictor.'), "
                   "repeatable; the rest is frozen, BatchNorm statistics included. Default: all.")
@click.option("--no-progress", is_flag=True)
def train_detector(datasets, class_map, out_dir, iterations, batch_size, lr, weight_decay, warmup,
                   checkpoint_every, log_every, val_dataset, val_every, val_max_images, time_budget_min, crop_px,
                   scale_jitter, backbone, fpn_channels, box_head_units, min_size_px, max_size_px, seed, device,
                   threads, resume, init_from, train_only, no_progress):
    """Train the Faster R-CNN detector from scratch on COCO dataset(s); writes OUT/detector.pt + .json."""
    from .data import AugmentConfig, DatasetSpec, parse_class_map
    from .torchvision_detector import DetectorConfig
    from .train import DetectorTrainConfig, train

    try:
        specs = [DatasetSpec.parse(d) for d in datasets]
        val = DatasetSpec.parse(val_dataset) if val_dataset else None
        cmap = parse_class_map(class_map)
        dc = DetectorConfig(backbone=backbone, fpn_channels=fpn_channels, box_head_units=box_head_units,
                            min_size_px=min_size_px, max_size_px=max_size_px)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    tc = DetectorTrainConfig(iterations=iterations, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                     warmup_iterations=warmup, checkpoint_every=checkpoint_every, log_every=log_every,
                     val_every=val_every, time_budget_min=time_budget_min, seed=seed, device=device,
                     threads=threads, train_only=tuple(train_only))
    ac = AugmentConfig(crop_px=crop_px, scale_jitter=tuple(scale_jitter))
    path = train(specs, out_dir, class_map=cmap, detector_config=dc, train_config=tc, augment_config=ac,
                 val_dataset=val, val_max_images=val_max_images, resume=resume, init_from=init_from, recipe=_recipe(),
                 progress=not no_progress)
    click.echo(f"wrote {path} and {path.with_suffix('.json')}")


@click.command("train-refine-head")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The detector whose final boxes the head learns to refine (not changed).")
@click.option("--dataset", "datasets", multiple=True, required=True, help=_DATASET_HELP)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--fg-iou", type=float, default=0.6, show_default=True,
              help="First-stage boxes with at least this IoU with a true box are training samples.")
@click.option("--steps", "--iterations", "iterations", type=int, default=4000, show_default=True,
              help="Optimiser steps (at most, with --time-budget-min).")
@click.option("--batch-size", type=int, default=2, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Peak AdamW learning rate (cosine decay).")
@click.option("--crop-px", type=int, default=704, show_default=True, help="Random crop side, model-input pixels.")
@click.option("--time-budget-min", type=float, default=None, help="Stop after this many minutes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch.set_num_threads on CPU.")
@click.option("--background-per-image", type=int, default=0, show_default=True,
              help="Also teach up to this many boxes on background per image to stay (zero deltas).")
def train_refine_head_command(weights, datasets, out_dir, fg_iou, iterations, batch_size, lr, crop_px, time_budget_min,
                              seed, threads, background_per_image):
    """Train a second box-regression stage on a frozen detector; writes OUT/detector.pt + .json (sorterbot_cloud.detection.refine_head)."""
    from .data import DatasetSpec
    from .refine_training import train_refine_head

    try:
        specs = [DatasetSpec.parse(d) for d in datasets]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    path = train_refine_head(weights, specs, out_dir, fg_iou=fg_iou, iterations=iterations, batch_size=batch_size, lr=lr,
                             crop_px=crop_px, time_budget_min=time_budget_min, seed=seed, threads=threads,
                             recipe=_recipe(), background_per_image=background_per_image)
    click.echo(f"wrote {path} and {path.with_suffix('.json')}")


@click.command("export-detector")
@click.option("--checkpoint", type=click.Path(exists=True, path_type=Path), required=True,
              help="checkpoint_last.pt or checkpoint_best.pt of a train-detector run.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=Path("weights/detector.pt"),
              show_default=True)
def export_detector(checkpoint, out_path):
    """Write the fp16 detector file + JSON sidecar from a training checkpoint."""
    from .train import export_checkpoint

    path = export_checkpoint(checkpoint, out_path)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.with_suffix('.json')}")


@click.command("evaluate-detector")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Detector file (default: settings' detector_weights).")
@click.option("--dataset", required=True, help="COCO 'annotations.json:images_dir'.")
@click.option("--class-map", multiple=True, help="'source=item|container|ignore', repeatable.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for metrics.json, pr_curve.png, confusion_matrix.png.")
@click.option("--score-threshold", type=float, default=None, help="Operating threshold (default: the model's).")
@click.option("--min-size-px", type=int, default=None, help="Override the model's input short side.")
@click.option("--max-images", type=int, default=None)
@click.option("--name", default=None, help="Also store the metrics under sidecar['metrics'][NAME].")
@click.option("--threads", type=int, default=None)
@click.option("--box-refine-steps", type=click.IntRange(0, 1), default=None,
              help="Regress the final boxes once more (default: the file's setting).")
@click.option("--runtime", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="onnxruntime: export the detector at this operating point to OUT/detector.onnx and evaluate "
                   "that graph in ONNX Runtime (docs/onnx.rst).")
def evaluate_detector(weights, dataset, class_map, out_dir, score_threshold, min_size_px, max_images, name, threads,
                      box_refine_steps, runtime):
    """AP50 per class, COCO mAP, precision / recall / F1, confusion matrix and plots on a COCO dataset."""
    import torch

    from sorterbot_cloud.config import Settings

    from .data import DatasetSpec, load_coco, parse_class_map
    from .evaluate import evaluate_records, write_report
    from .torchvision_detector import TorchvisionDetector

    if threads:
        torch.set_num_threads(threads)
    weights = Path(weights) if weights else Settings.load().detector_weights
    try:
        spec = DatasetSpec.parse(dataset)
        cmap = parse_class_map(class_map)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    overrides = {"score_threshold": 0.01, "box_refine_steps": box_refine_steps}
    if min_size_px:
        own = TorchvisionDetector._peek_config(weights)  # the long side keeps the weights' own ratio
        overrides.update(min_size_px=min_size_px,
                         max_size_px=max(min_size_px, int(round(min_size_px * own.max_size_px / own.min_size_px))))
    threshold = TorchvisionDetector._peek_config(weights).score_threshold if score_threshold is None else score_threshold
    detector = TorchvisionDetector.load(weights, fuse=runtime == "torch", **overrides)
    model = detector
    if runtime == "onnxruntime":
        from .onnx_detector import OnnxDetector, export_loaded_detector

        c = detector.config
        graph = export_loaded_detector(detector, weights, Path(out_dir) / "detector.onnx",
                                       {"score_threshold": c.score_threshold, "nms_iou": c.nms_iou,
                                        "min_size_px": c.min_size_px, "box_refine_steps": c.box_refine_steps})
        model = OnnxDetector(graph, threads=threads)
    records = load_coco(spec.annotations, spec.images_dir, cmap, detector.config.class_names)
    if max_images:
        records = records[:max_images]
    t0 = time.perf_counter()
    metrics = evaluate_records(model, records, detector.config.class_names, threshold, progress=True)
    metrics.update(weights=str(weights), dataset=dataset, min_size_px=detector.config.min_size_px,
                   box_refine_steps=detector.config.box_refine_steps, runtime=runtime,
                   seconds=round(time.perf_counter() - t0, 1))
    paths = write_report(metrics, out_dir, title=name or "")
    ap = metrics["ap50_per_class"]
    op = metrics["operating_point"]
    sides = {k: round(v["mean_abs_px"], 2) if v["mean_abs_px"] is not None else None
             for k, v in metrics["box_side_errors"].items()}
    click.echo(json.dumps({"ap50_per_class": ap, "map": round(metrics["map"], 4), "precision": round(op["precision"], 4),
                           "box_side_mean_abs_px": sides, "box_refine_steps": detector.config.box_refine_steps,
                           "runtime": runtime,
                           "box_errors_by_type": {t: {k: round(v, 3) if isinstance(v, float) else v for k, v in e.items()}
                                                  for t, e in metrics["box_errors_by_type"].items()},
                           "box_errors_by_texture": {t: {k: round(v, 3) if isinstance(v, float) else v for k, v in e.items()}
                                                     for t, e in metrics["box_errors_by_texture"].items()},
                           "recall": round(op["recall"], 4), "f1": round(op["f1"], 4),
                           "recall_margins": metrics["recall_margins"],
                           "confusion_matrix": op["confusion_matrix"], "labels": op["labels"], "files": paths}))
    if name:
        sidecar = weights.with_suffix(".json")
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        summary = {k: v for k, v in metrics.items() if k != "pr_curves"}
        meta.setdefault("metrics", {})[name] = summary
        sidecar.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        click.echo(f"stored metrics under {sidecar}: metrics.{name}")


def bench_detector(weights: Path | None = None, frames_dir: Path | None = None, n_frames: int = 4, repeats: int = 3,
                   reference: bool = True, threads: int | None = None, width_px: int = 1640,
                   height_px: int = 1232, echo=print, baseline_weights: Path | None = None) -> dict:
    """Median ms per frame of our detector and of torchvision's ``fasterrcnn_resnet50_fpn``, same frames.

    The reference is the Detectron2 ``faster_rcnn_R_50_FPN`` architecture as torchvision
    builds it (random weights, its default 800 px short side); it is timed in the same
    process on the same frames, so the ratio holds across machines. Decoding is excluded.

    Parameters
    ----------
    weights : path, optional
        Our detector file; an untrained default model when None or missing.
    frames_dir : path, optional
        JPEG/PNG frames; otherwise ``n_frames`` seeded random-texture frames of
        ``width_px`` x ``height_px`` are used.
    n_frames, repeats : int
        Frames, and timed passes over them (one untimed warm-up pass first).
    reference : bool
        Also time the reference model.
    threads : int, optional
        ``torch.set_num_threads``.
    baseline_weights : path, optional
        Another detector file (e.g. the previous weights) timed in the same process on the
        same frames, its passes alternating with ours; adds ``baseline_ms_median`` and
        ``ratio_to_baseline`` (ours / baseline, wall).

    Process CPU time per frame is reported beside wall time: on a machine shared with other
    jobs, wall time depends on the load, while CPU time per frame (with one thread) does
    much less.

    Returns
    -------
    dict
        ``ours_ms_median``, ``reference_ms_median`` (or None), ``speedup`` (wall), the same
        with ``_cpu_`` for process CPU time, ``frames``, ``threads``, ``load_average``.
    """
    import numpy as np
    import torch
    import torchvision

    from sorterbot_cloud.imaging import read_image_file

    from .torchvision_detector import TorchvisionDetector, backbone_channels_last, fuse_conv_bn

    if threads:
        torch.set_num_threads(threads)
    if frames_dir:
        paths = sorted(p for p in Path(frames_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        images = [read_image_file(p) for p in paths[:n_frames]]
    else:
        import cv2

        rng = np.random.default_rng(0)
        images = []
        for _ in range(n_frames):
            small = rng.integers(0, 256, (height_px // 16, width_px // 16, 3), dtype=np.uint8)
            images.append(cv2.resize(small, (width_px, height_px), interpolation=cv2.INTER_CUBIC))
    if weights is not None and Path(weights).is_file():
        ours = TorchvisionDetector.load(weights, fuse=True)
        label = str(weights)
    else:
        ours = TorchvisionDetector.untrained().fuse()
        label = "untrained default architecture"

    cpu_ms: dict[str, list[float]] = {}

    def time_fn(fn, key) -> list[float]:
        for img in images[:1]:
            fn(img)
        out = []
        for _ in range(repeats):
            for img in images:
                c0, t0 = time.process_time(), time.perf_counter()
                fn(img)
                out.append((time.perf_counter() - t0) * 1000.0)
                cpu_ms.setdefault(key, []).append((time.process_time() - c0) * 1000.0)
        return out

    if baseline_weights is not None:
        base = TorchvisionDetector.load(baseline_weights, fuse=True)
        saved, repeats = repeats, 1
        ours_ms, base_ms = [], []
        for _ in range(saved):  # alternate passes so that a change of load hits both alike
            ours_ms += time_fn(ours.detect, "ours")
            base_ms += time_fn(base.detect, "baseline")
        repeats = saved
    else:
        ours_ms = time_fn(ours.detect, "ours")
    result = {"ours": label, "ours_ms_median": statistics.median(ours_ms), "reference_ms_median": None,
              "speedup": None, "ours_cpu_ms_median": statistics.median(cpu_ms["ours"]),
              "reference_cpu_ms_median": None, "cpu_speedup": None, "frames": len(images),
              "frame_size": list(images[0].shape[:2][::-1]), "threads": torch.get_num_threads(),
              "parameters": ours.parameter_count(), "load_average": list(os.getloadavg()),
              "cpu_count": os.cpu_count()}
    echo(f"ours ({label}): median {result['ours_ms_median']:.1f} ms/frame wall, "
         f"{result['ours_cpu_ms_median']:.1f} ms/frame process CPU, over {len(ours_ms)} runs "
         f"({result['frame_size'][0]}x{result['frame_size'][1]}, {result['threads']} threads, "
         f"load average {result['load_average'][0]:.1f} on {result['cpu_count']} CPUs)")
    if baseline_weights is not None:
        result["baseline"] = str(baseline_weights)
        result["baseline_ms_median"] = statistics.median(base_ms)
        result["ratio_to_baseline"] = result["ours_ms_median"] / result["baseline_ms_median"]
        echo(f"baseline ({baseline_weights}): median {result['baseline_ms_median']:.1f} ms/frame wall over "
             f"{len(base_ms)} runs; ours / baseline = {result['ratio_to_baseline']:.3f}")
    if reference:
        ref = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
        fuse_conv_bn(ref)  # like for like: both models with BatchNorm folded and a channels-last backbone
        backbone_channels_last(ref)

        @torch.inference_mode()
        def run_ref(img):
            ref([torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)])

        saved = repeats
        repeats = max(1, min(repeats, 2))
        ref_ms = time_fn(run_ref, "reference")
        repeats = saved
        result["reference_ms_median"] = statistics.median(ref_ms)
        result["speedup"] = result["reference_ms_median"] / result["ours_ms_median"]
        result["reference_cpu_ms_median"] = statistics.median(cpu_ms["reference"])
        result["cpu_speedup"] = result["reference_cpu_ms_median"] / result["ours_cpu_ms_median"]
        echo(f"reference torchvision fasterrcnn_resnet50_fpn: median {result['reference_ms_median']:.1f} ms/frame "
             f"wall, {result['reference_cpu_ms_median']:.1f} ms/frame process CPU, over {len(ref_ms)} runs")
        echo(f"speed-up: {result['speedup']:.1f}x wall, {result['cpu_speedup']:.1f}x process CPU")
    return result


@click.command("bench-detector")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Default: settings' detector_weights.")
@click.option("--frames", "frames_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of frames (default: synthetic 1640x1232 frames).")
@click.option("--n-frames", type=int, default=4, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--reference/--no-reference", default=True, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--baseline-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Also time this detector file (e.g. the previous weights), passes alternating with ours.")
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def bench_detector_command(weights, frames_dir, n_frames, repeats, reference, threads, baseline_weights, json_out):
    """Median ms per frame: ours vs torchvision's fasterrcnn_resnet50_fpn (same frames, same process)."""
    from sorterbot_cloud.config import Settings

    weights = Path(weights) if weights else Settings.load().detector_weights
    result = bench_detector(weights, frames_dir, n_frames, repeats, reference, threads, echo=click.echo,
                            baseline_weights=baseline_weights)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")


@click.command("convert-voc")
@click.option("--xml-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--out", "out_json", type=click.Path(path_type=Path), required=True)
@click.option("--class-map", multiple=True, help="'VOC name=item|container|ignore', repeatable.")
@click.option("--default-class", default="item", show_default=True, help="Class of names not in the map.")
def convert_voc(xml_dir, out_json, class_map, default_class):
    """Convert Pascal VOC xml files (labelImg) to one COCO instances file."""
    from .data import parse_class_map, voc_to_coco

    coco = voc_to_coco(xml_dir, out_json, parse_class_map(class_map), default_class)
    click.echo(f"wrote {out_json}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")


@click.command("merge-coco")
@click.argument("datasets", nargs=-1, required=True)
@click.option("--out", "out_json", type=click.Path(path_type=Path), required=True)
def merge_coco_command(datasets, out_json):
    """Merge COCO datasets ('annotations.json:images_dir' ...) into OUT (file names relative to its folder)."""
    from .data import merge_coco

    merged = merge_coco(datasets, out_json)
    click.echo(f"wrote {out_json}: {len(merged['images'])} images, {len(merged['annotations'])} boxes")


@click.command("average-detectors")
@click.option("--input", "inputs", multiple=True, required=True,
              help="'detector.pt[:weight]' (weight default 1), repeatable; weights are normalised.")
@click.option("--only", "prefixes", multiple=True,
              help="Average only the tensors under this name prefix (e.g. 'roi_heads.'), repeatable; "
                   "the rest comes from the first input.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
def average_detectors_command(inputs, prefixes, out_path):
    """Write the weighted mean of detector files fine-tuned from one start (a model soup) + JSON sidecar."""
    import torch

    from .average import average_detector_files

    parsed = []
    for spec in inputs:
        path, sep, weight = spec.rpartition(":")
        try:
            parsed.append((Path(path), float(weight)) if sep else (Path(spec), 1.0))
        except ValueError:
            raise click.BadParameter(f"--input {spec!r}: the weight after ':' must be a number") from None
    try:
        blob = average_detector_files(parsed, prefixes)
    except (ValueError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc)) from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, out_path)
    first_sidecar = parsed[0][0].with_suffix(".json")
    meta = json.loads(first_sidecar.read_text()) if first_sidecar.is_file() else {}
    meta.pop("metrics", None)  # measured on the first file, not on the average
    meta["averaged_from"] = {"inputs": [{"path": str(p), "weight": w} for p, w in parsed],
                             "only": list(prefixes), "recipe": _recipe()}
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    click.echo(f"wrote {out_path} and {out_path.with_suffix('.json')}")


@click.command("synth-frames")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Gets annotations.json (COCO) and images/.")
@click.option("--frames", "n_frames", type=int, default=1000, show_default=True)
@click.option("--cutouts-from", "cutout_specs", multiple=True,
              help="Labelled COCO 'annotations.json:images_dir' whose item boxes are cut out (GrabCut) and pasted; "
                   "also used as real backgrounds outside their boxes. Training splits only. Repeatable.")
@click.option("--table-frames", "table_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of unlabelled frames of a table, used low-passed as backgrounds (searched recursively). Repeatable.")
@click.option("--procedural-share", type=click.FloatRange(0, 1), default=0.4, show_default=True,
              help="Share of pasted items drawn procedurally (plain solids, dominoes, cylinders, cards, polygons).")
@click.option("--items", "n_items", type=(int, int), default=(1, 8), show_default=True, help="Items per frame (range).")
@click.option("--seed", type=int, default=0, show_default=True)
def synth_frames(out_dir, n_frames, cutout_specs, table_dirs, procedural_share, n_items, seed):
    """Domain-randomised cut-paste training frames (Dwibedi et al. 2017) for the detector."""
    from .copy_paste import cutouts_from_records, write_dataset
    from .data import DatasetSpec, load_coco

    records = []
    for text in cutout_specs:
        spec = DatasetSpec.parse(text)
        records.extend(load_coco(spec.annotations, spec.images_dir))
    cutouts = cutouts_from_records(records, seed=seed)
    tables = sorted(p for d in table_dirs for p in d.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    click.echo(f"{len(cutouts)} cut-outs from {len(records)} labelled frames, {len(tables)} table frames")
    coco = write_dataset(out_dir, n_frames, cutouts, seed=seed, real_records=records, table_frames=tables,
                         procedural_share=procedural_share, n_items=n_items, progress=True)
    click.echo(f"wrote {out_dir}/annotations.json: {len(coco['images'])} images, {len(coco['annotations'])} boxes")


@click.command("adapt-detector")
@click.option("--voc", "voc_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of labelImg Pascal VOC .xml files with their images beside them.")
@click.option("--coco", "coco_spec", default=None, help="Or a COCO dataset 'annotations.json:images_dir'.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Gets detector.pt, its JSON sidecar and report.json.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Detector to start from (default: settings' detector_weights, the shipped one).")
@click.option("--class-map", multiple=True,
              help="'label=item|container|ignore', repeatable; labels not named are items.")
@click.option("--time-budget-min", type=click.FloatRange(min=0.01), default=15.0, show_default=True,
              help="Training time in all (minutes).")
@click.option("--folds", type=click.IntRange(min=0), default=None,
              help="Held-out folds (default: 3-fold with 20 frames or fewer, else one 25%% split; 0: none).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: one per core).")
def adapt_detector_command(voc_dir, coco_spec, out_dir, weights, class_map, time_budget_min, folds, seed, threads):
    """Teach the detector your table: fine-tune on a few labelled frames; prints AP50 before and after."""
    from sorterbot_cloud.config import Settings

    from .adapt import AdaptConfig, adapt_detector, format_report
    from .data import DatasetSpec, load_coco, parse_class_map, voc_to_coco

    if (voc_dir is None) == (coco_spec is None):
        raise click.UsageError("give exactly one of --voc DIR or --coco ANNOTATIONS:IMAGES_DIR")
    try:
        cmap = parse_class_map(class_map)
        if voc_dir is not None:
            labels = out_dir / "labels.json"
            voc_to_coco(voc_dir, labels, cmap, default_class="item")
            spec = DatasetSpec(labels, voc_dir)
            records = load_coco(spec.annotations, spec.images_dir)
        else:
            spec = DatasetSpec.parse(coco_spec)
            if not spec.annotations.is_file():
                raise FileNotFoundError(f"COCO annotations not found: {spec.annotations}")
            # as with VOC: a category the class map does not name is an item
            names = [c["name"] for c in json.loads(spec.annotations.read_text()).get("categories", [])]
            cmap = {n: cmap.get(n, n if n in ("item", "container") else "item") for n in names}
            records = load_coco(spec.annotations, spec.images_dir, cmap)
    except (ValueError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc)) from None
    missing = [str(r.path) for r in records if not Path(r.path).is_file()]
    if missing:
        raise click.BadParameter(f"{len(missing)} labelled images are missing, e.g. {missing[0]}")
    weights = Path(weights) if weights else Settings.load().detector_weights
    cfg = AdaptConfig(time_budget_min=time_budget_min, folds=folds, seed=seed, threads=threads)
    try:
        report = adapt_detector(records, weights, out_dir, cfg, log=lambda line: click.echo(line, err=True))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(format_report(report))
