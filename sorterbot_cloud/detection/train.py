"""Training recipe of the default detector (kept apart from the runtime code).

From scratch (no pretrained weights are reachable here), on CPU or GPU, from one or
several COCO datasets mixed by weight. AdamW with linear warm-up and cosine decay,
gradient-norm clipping, a resumable checkpoint every ``checkpoint_every`` iterations,
losses logged to ``log.jsonl``, optional validation (AP50) with the best checkpoint kept,
and the final fp16 detector file + JSON sidecar.
"""

from __future__ import annotations

import json
import logging
import platform
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from sorterbot_cloud import schedule

from .data import AugmentConfig, DatasetSpec, MixedSampler, load_coco
from .torchvision_detector import FORMAT, DetectorConfig, TorchvisionDetector, build_model

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


@dataclass
class DetectorTrainConfig:
    """Optimisation settings of :func:`train`.

    Parameters
    ----------
    iterations : int
        Optimiser steps of the schedule.
    batch_size : int
        Crops per step.
    lr : float
        Peak AdamW learning rate.
    weight_decay : float
    warmup_iterations : int
        Linear warm-up from ``lr / 100``.
    grad_clip : float
        Max gradient L2 norm.
    checkpoint_every : int
    log_every : int
    val_every : int
        Validate (AP50 on the validation set) every this many iterations; 0 = never.
    time_budget_min : float or None
        When set, the schedule's progress is ``max(it / iterations, elapsed / budget)`` and
        training stops when it reaches 1, so a run ends on time on a busy machine.
    seed : int
    device : str
    threads : int or None
        ``torch.set_num_threads`` (CPU).
    train_only : tuple of str
        When not empty, only the parameters whose names start with one of these prefixes
        are trained (e.g. ``("roi_heads.box_predictor.",)``: last-layer retraining, Kirichenko
        et al., "Last Layer Re-Training is Sufficient for Robustness to Spurious
        Correlations", ICLR 2023); every other parameter is frozen, and a BatchNorm layer
        with no trainable parameter keeps its running statistics (:func:`freeze_except`,
        :func:`train_mode`).
    """

    iterations: int = 2000
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_iterations: int = 200
    grad_clip: float = 10.0
    checkpoint_every: int = 200
    log_every: int = 10
    val_every: int = 0
    time_budget_min: float | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    train_only: tuple[str, ...] = ()


def lr_factor(progress: float, it: int, config: DetectorTrainConfig) -> float:
    """Learning-rate multiplier at iteration ``it``: :func:`sorterbot_cloud.schedule.lr_factor`."""
    return schedule.lr_factor(it, progress, config.warmup_iterations)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def freeze_except(model: torch.nn.Module, prefixes: Sequence[str]) -> int:
    """Freeze every parameter whose name starts with none of ``prefixes``.

    Parameters
    ----------
    model : torch.nn.Module
    prefixes : sequence of str
        Names as in ``model.named_parameters()``; empty: everything stays trainable.

    Returns
    -------
    int
        Number of trainable parameter values left.

    Raises
    ------
    ValueError
        If a prefix matches no parameter.
    """
    prefixes = tuple(prefixes)
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ValueError(f"train_only prefix {prefix!r} matches no parameter of the detector")
    for name, p in model.named_parameters():
        p.requires_grad_(not prefixes or name.startswith(prefixes))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_mode(model: torch.nn.Module) -> None:
    """``model.train()``, with BatchNorm layers whose parameters are all frozen left in eval mode.

    A frozen layer must not change: in training mode a BatchNorm layer would still update
    its running mean and variance from every batch.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def train(
    datasets: Sequence[DatasetSpec],
    out_dir: str | Path,
    *,
    class_map: dict | None = None,
    detector_config: DetectorConfig | None = None,
    train_config: DetectorTrainConfig | None = None,
    augment_config: AugmentConfig | None = None,
    val_dataset: DatasetSpec | None = None,
    val_max_images: int = 60,
    resume: bool = False,
    init_from: str | Path | None = None,
    recipe: str | None = None,
    progress: bool = True,
) -> Path:
    """Train a detector and write ``out_dir/detector.pt`` (fp16) + ``detector.json``.

    Parameters
    ----------
    datasets : sequence of DatasetSpec
        COCO datasets mixed by their weights.
    out_dir : path
        Checkpoints, ``log.jsonl`` and the final files go here.
    class_map : dict, optional
        Source category name -> ``item`` / ``container`` / ``ignore``.
    detector_config, train_config, augment_config : optional
        Defaults of each dataclass when None. On ``resume`` the checkpoint's detector
        config wins.
    val_dataset : DatasetSpec, optional
        Validated every ``train_config.val_every`` iterations on its first
        ``val_max_images`` images; the best mean AP50 is kept in ``checkpoint_best.pt``
        and used for the final file.
    resume : bool
        Continue from ``out_dir/checkpoint_last.pt`` (model, optimiser, iteration, RNG).
    init_from : path, optional
        Start from this checkpoint's model weights and detector config (a warm restart:
        optimiser, iteration count, time budget and learning-rate schedule start afresh).
        Either a training checkpoint (``checkpoint_*.pt``) or an exported detector file
        (``detector.pt``, fp16, e.g. the shipped ``weights/detector.pt``; its weights are
        cast back to float32). Ignored when ``resume`` finds its own checkpoint.
    recipe : str, optional
        The command line, recorded in the sidecar.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Path
        ``out_dir/detector.pt``.

    Raises
    ------
    FileNotFoundError
        On ``resume`` without a checkpoint, a missing ``init_from``, or a missing dataset file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc = train_config or DetectorTrainConfig()
    ac = augment_config or AugmentConfig()
    dc = detector_config or DetectorConfig()
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    _seed_everything(tc.seed)

    state = None
    if resume:
        ckpt_path = out_dir / CHECKPOINT
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume given but no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        dc = DetectorConfig.from_dict(state["detector_config"])
    init_state = None
    if state is None and init_from is not None:
        if not Path(init_from).is_file():
            raise FileNotFoundError(f"--init-from checkpoint {init_from} does not exist")
        init_state = torch.load(init_from, map_location="cpu", weights_only=False)
        if isinstance(init_state, dict) and init_state.get("format") == FORMAT:  # an exported (fp16) detector file
            init_state = {"model": {k: v.float() if v.is_floating_point() else v for k, v in init_state["state_dict"].items()},
                          "detector_config": init_state["config"]}
        dc = DetectorConfig.from_dict(init_state["detector_config"])

    loaded = [(spec, load_coco(spec.annotations, spec.images_dir, class_map, dc.class_names)) for spec in datasets]
    sampler = MixedSampler(loaded, dc.min_size_px, ac, seed=tc.seed)
    val_records = None
    if val_dataset is not None and tc.val_every > 0:
        val_records = load_coco(val_dataset.annotations, val_dataset.images_dir, class_map, dc.class_names)
        val_records = val_records[:val_max_images]

    device = torch.device(tc.device)
    model = build_model(dc).to(device)
    n_trainable = freeze_except(model, tc.train_only)
    if tc.train_only:
        log.info("training only %s: %d parameter values", ", ".join(tc.train_only), n_trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr
    )
    start_it, elapsed_prev, best = 0, 0.0, {"ap50_mean": -1.0, "iteration": -1}
    if init_state is not None:
        model.load_state_dict(init_state["model"])
        del init_state
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_it = int(state["iteration"])
        elapsed_prev = float(state.get("elapsed_s", 0.0))
        best = state.get("best", best)
        sampler.rng = np.random.default_rng(state.get("sampler_seed", tc.seed) + start_it)
        torch.manual_seed(tc.seed + start_it)

    def save_checkpoint(path: Path, it: int, elapsed: float) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": it,
            "elapsed_s": elapsed, "detector_config": dc.to_dict(), "train_config": asdict(tc),
            "augment_config": asdict(ac), "best": best, "sampler_seed": tc.seed,
            "recipe": recipe, "class_map": class_map or {}, "data": _data_summary(loaded),
        }, tmp)
        tmp.replace(path)

    log_path = out_dir / "log.jsonl"
    t_start = time.time()
    train_mode(model)
    batches = sampler.batches(tc.batch_size)
    bar = tqdm(total=tc.iterations, initial=start_it, disable=not progress, dynamic_ncols=True, mininterval=5)
    it = start_it
    window: dict[str, list] = {}
    t_window = time.time()
    while True:
        elapsed = elapsed_prev + time.time() - t_start
        prog = schedule.progress(it, tc.iterations, elapsed, 60.0 * tc.time_budget_min if tc.time_budget_min else None)
        if prog >= 1.0:
            break
        factor = lr_factor(prog, it, tc)
        for group in optimizer.param_groups:
            group["lr"] = tc.lr * factor
        images, targets = next(batches)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {it}: { {k: float(v) for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        optimizer.step()
        it += 1
        for k, v in losses.items():
            window.setdefault(k, []).append(float(v.detach()))
        window.setdefault("loss", []).append(float(loss.detach()))
        window.setdefault("grad_norm", []).append(float(grad_norm))
        bar.update(1)
        if it % tc.log_every == 0:
            now = time.time()
            row = {k: round(float(np.mean(v)), 5) for k, v in window.items()}
            row.update(iteration=it, lr=tc.lr * factor, progress=round(prog, 4),
                       images_per_s=round(tc.log_every * tc.batch_size / max(1e-9, now - t_window), 3),
                       elapsed_s=round(elapsed_prev + now - t_start, 1))
            with log_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            bar.set_postfix(loss=row["loss"], lr=f"{tc.lr * factor:.2e}")
            window, t_window = {}, now
        if val_records is not None and it % tc.val_every == 0:
            metrics = _validate(model, dc, val_records, device)
            train_mode(model)
            row = {"iteration": it, "validation": metrics}
            with log_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            if metrics["ap50_mean"] > best["ap50_mean"]:
                best = {"ap50_mean": metrics["ap50_mean"], "iteration": it, "metrics": metrics}
                save_checkpoint(out_dir / BEST, it, elapsed_prev + time.time() - t_start)
        if it % tc.checkpoint_every == 0:
            save_checkpoint(out_dir / CHECKPOINT, it, elapsed_prev + time.time() - t_start)
    bar.close()
    elapsed = elapsed_prev + time.time() - t_start
    save_checkpoint(out_dir / CHECKPOINT, it, elapsed)
    final_state = model.state_dict()
    chosen = "last"
    if val_records is not None:
        if best["iteration"] == it:
            metrics = best["metrics"]
        else:
            metrics = _validate(model, dc, val_records, device)
            with (out_dir / "log.jsonl").open("a") as fh:
                fh.write(json.dumps({"iteration": it, "validation": metrics}) + "\n")
        if metrics["ap50_mean"] >= best["ap50_mean"]:
            best = {"ap50_mean": metrics["ap50_mean"], "iteration": it, "metrics": metrics}
        elif (out_dir / BEST).is_file():
            final_state = torch.load(out_dir / BEST, map_location="cpu", weights_only=False)["model"]
            chosen = f"best (iteration {best['iteration']})"
    model.load_state_dict(final_state)
    metadata = _metadata(recipe, loaded, class_map, tc, ac, dc, it, elapsed, chosen,
                         best if val_records is not None else None)
    detector = TorchvisionDetector(model.cpu(), dc, "cpu")
    return detector.save(out_dir / "detector.pt", metadata)


def _data_summary(loaded) -> list[dict]:
    return [{"annotations": str(s.annotations), "images_dir": str(s.images_dir), "weight": s.weight,
             "scale": s.scale, "images": len(r)} for s, r in loaded]


def _metadata(recipe, loaded, class_map, tc, ac, dc, it, elapsed, chosen, validation) -> dict:
    return {
        "recipe": recipe,
        "data": _data_summary(loaded),
        "class_map": class_map or {},
        "seed": tc.seed,
        "train_config": asdict(tc),
        "augment_config": asdict(ac),
        "detector_config": dc.to_dict(),
        "iterations_done": it,
        "images_seen": it * tc.batch_size,
        "train_time_s": round(elapsed, 1),
        "weights_from": chosen,
        "validation": validation,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "metrics": {},
    }


def export_checkpoint(checkpoint: str | Path, out_path: str | Path, recipe: str | None = None,
                      extra: dict | None = None) -> Path:
    """Write the fp16 detector file + sidecar from a training checkpoint (last or best).

    Parameters
    ----------
    checkpoint : path
        ``checkpoint_last.pt`` or ``checkpoint_best.pt`` written by :func:`train`.
    out_path : path
        Detector file to write (``.json`` sidecar beside it).
    recipe : str, optional
        Training command line, for the sidecar.
    extra : dict, optional
        Merged into the sidecar (e.g. ``data``).

    Raises
    ------
    FileNotFoundError
        If ``checkpoint`` does not exist.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    dc = DetectorConfig.from_dict(state["detector_config"])
    model = build_model(dc)
    model.load_state_dict(state["model"])
    tc = DetectorTrainConfig(**state["train_config"])
    ac = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["augment_config"].items()})
    metadata = _metadata(recipe or state.get("recipe"), [], state.get("class_map", {}), tc, ac, dc,
                         int(state["iteration"]), float(state.get("elapsed_s", 0.0)),
                         f"{checkpoint.name} (iteration {state['iteration']})", state.get("best"))
    metadata["data"] = state.get("data", [])
    metadata.update(extra or {})
    return TorchvisionDetector(model, dc, "cpu").save(out_path, metadata)


@torch.inference_mode()
def _validate(model, dc: DetectorConfig, records, device) -> dict:
    """AP50 per class on ``records`` with the model in eval mode (scores down to 0.01)."""
    from .evaluate import evaluate_records

    model.eval()
    detector = TorchvisionDetector(model, replace(dc, score_threshold=0.01), device)
    detector.model.roi_heads.score_thresh = 0.01
    try:
        metrics = evaluate_records(detector, records, dc.class_names, score_threshold=dc.score_threshold)
    finally:
        detector.model.roi_heads.score_thresh = dc.score_threshold
    ap = metrics["ap50_per_class"]
    return {"ap50_per_class": ap, "ap50_mean": float(np.mean(list(ap.values()))), "map": metrics["map"]}


__all__ = ["DetectorTrainConfig", "export_checkpoint", "lr_factor", "train"]
