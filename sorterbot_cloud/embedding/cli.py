"""``sorterbot-cloud train-embedder`` and ``sorterbot-cloud evaluate-embedder``."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path

import click

from sorterbot_cloud.config import PROJECT_ROOT

DEFAULT_REAL_DIR = PROJECT_ROOT.parent / "shared" / "realdata" / "microcontrollers"
DEFAULT_WEIGHTS = PROJECT_ROOT / "weights" / "embedder.pt"

log = logging.getLogger("sorterbot_cloud.embedding.cli")


def _setup_logging(log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def _heldout_types() -> tuple[str, ...]:
    try:
        from sorterbot_cloud.sim.catalog import HELDOUT_ITEM_TYPES
    except ImportError:  # simulator not installed
        return ()
    return tuple(HELDOUT_ITEM_TYPES)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _recipe() -> str:
    return "sorterbot-cloud " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@click.command("train-embedder")
@click.option("--train-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Training crops, <dir>/<type>/<i>.png (e.g. from `simulate crops`).")
@click.option("--val-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Crops of types never trained on; their grouping ARI is logged (monitoring only).")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("runs/embedder"), show_default=True,
              help="Checkpoints, history and log.")
@click.option("--export", "export_path", type=click.Path(path_type=Path), default=DEFAULT_WEIGHTS, show_default=True,
              help="Where the fp16 weights (+ .json sidecar) are written at the end.")
@click.option("--steps", "--iterations", "steps", type=int, default=4000, show_default=True,
              help="Optimiser steps (at most, with --time-budget-min).")
@click.option("--time-budget-min", type=click.FloatRange(min=0.0), default=None,
              help="Stop after this many minutes; the cosine schedule follows the elapsed time.")
@click.option("--time-budget-s", type=float, default=0.0, show_default=True,
              help="The same budget in seconds (0: off); --time-budget-min wins when both are given.")
@click.option("--input-size", "input_size_px", type=int, default=64, show_default=True, help="Input side in pixels.")
@click.option("--types-per-batch", type=int, default=8, show_default=True)
@click.option("--crops-per-type", type=int, default=4, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--warmup-steps", type=int, default=200, show_default=True)
@click.option("--temperature", type=float, default=0.1, show_default=True)
@click.option("--instance-weight", type=float, default=0.25, show_default=True)
@click.option("--colour-permutations/--no-colour-permutations", default=True, show_default=True,
              help="Add RGB channel-permutation pseudo-classes of the coloured types.")
@click.option("--focus-radii", type=(float, float), default=(0.3, 0.5), show_default=True,
              help="Centre weighting of the input: full weight within the first radius, none beyond the second "
                   "(fractions of the side). Written to the sidecar; the embedder applies it too.")
@click.option("--background-swap", type=float, default=0.0, show_default=True,
              help="Probability of pasting a crop's item (GrabCut mask) onto another table or colour.")
@click.option("--type-share", "type_share_specs", multiple=True, metavar="PREFIX=SHARE",
              help="Give the types whose name starts with PREFIX this share (0..1) of the batch draws; repeatable. "
                   "E.g. mc_=0.25 makes the four boards of a real set meet in most batches.")
@click.option("--no-focus", is_flag=True, help="Use the whole crop (no centre weighting).")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Start from this checkpoint or weights file (fine-tuning); optimiser and schedule start afresh.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True)
@click.option("--eval-every", type=int, default=250, show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from <out-dir>/last.pt.")
@click.option("--export-only", is_flag=True, help="Export <out-dir>/last.pt without training.")
@click.option("--allow-heldout-types", is_flag=True, help="Allow the simulator's held-out item types in --train-dir.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train_embedder(train_dir, val_dir, out_dir, export_path, steps, time_budget_min, time_budget_s, input_size_px, types_per_batch, crops_per_type, lr,
                   warmup_steps, temperature, instance_weight, colour_permutations, focus_radii, background_swap, type_share_specs, no_focus, init_from, seed, threads, checkpoint_every, eval_every, resume,
                   export_only, allow_heldout_types, progress):
    """Train the item embedder (ResNet18 from scratch, supervised contrastive) on crops per type."""
    import numpy as np

    if time_budget_min is not None:
        time_budget_s = 60.0 * time_budget_min
    import torch

    from .data import load_crop_folder
    from .training import EmbedderTrainConfig, export_weights
    from .training import train_embedder as run

    type_shares = {}
    for spec in type_share_specs:
        prefix, sep, value = spec.rpartition("=")
        try:
            type_shares[prefix] = float(value)
        except ValueError:
            prefix = ""
        if not sep or not prefix:
            raise click.BadParameter(f"{spec!r} is not PREFIX=SHARE", param_hint="--type-share")
    _setup_logging(out_dir / "train.log")
    leaked = sorted(set(_heldout_types()) & {p.name for p in train_dir.iterdir() if p.is_dir()})
    if leaked and not allow_heldout_types:
        raise click.UsageError(f"--train-dir holds held-out item types {leaked}; they must stay out of training")
    cfg = EmbedderTrainConfig(input_size_px=input_size_px, steps=steps, types_per_batch=types_per_batch, crops_per_type=crops_per_type,
                      lr=lr, warmup_steps=min(warmup_steps, steps), temperature=temperature, instance_weight=instance_weight,
                      colour_permutations=colour_permutations, time_budget_s=time_budget_s,
                      focus_radii=None if no_focus else tuple(focus_radii), background_swap=background_swap, type_shares=type_shares, init_from=str(init_from) if init_from else None,
                      seed=seed, threads=threads, checkpoint_every=checkpoint_every, eval_every=eval_every)
    train = load_crop_folder(train_dir)
    counts = {name: int(np.sum(train.type_ids == i)) for i, name in enumerate(train.type_names)}
    if len(counts) <= 20:
        log.info("training crops: %d of %d types %s", len(train), len(train.type_names), counts)
    else:  # hundreds of procedural types: the spread, not the list (the sidecar keeps every count)
        per_type = np.array(list(counts.values()))
        log.info("training crops: %d of %d types, %d..%d per type (median %d)", len(train), len(train.type_names),
                 per_type.min(), per_type.max(), int(np.median(per_type)))
    if export_only:
        ckpt = torch.load(out_dir / "last.pt", map_location="cpu", weights_only=False)
        history = ckpt["history"]
        history["model"] = ckpt["model"]
        history["config"]["steps_done"] = ckpt["step"]
    else:
        val = load_crop_folder(val_dir) if val_dir is not None else None
        history = run(train, out_dir, cfg, val=val, resume=resume, progress=progress)
        history["config"]["steps_done"] = history["steps_done"]
    sidecar = {
        "recipe": _recipe(),
        "data": {"train_dir": str(train_dir), "types": train.type_names, "crops_per_type": counts,
                 "val_dir": str(val_dir) if val_dir else None,
                 "note": "simulator item crops (sorterbot_cloud.sim export_item_crops); held-out item types excluded"},
        "seed": seed,
        "input_size_px": input_size_px,
        "focus_radii": None if no_focus else list(focus_radii),
        "train": {"config": history["config"], "seconds": round(history["seconds"], 1),
                  "final_loss": history["losses"][-1] if history["losses"] else None,
                  "losses_every_n_steps": history["losses"][:: max(1, len(history["losses"]) // 40)],
                  "val_ari": history["val"]},
        "metrics": {},
    }
    export_weights(history["model"], export_path, sidecar)
    click.echo(f"wrote {export_path} ({export_path.stat().st_size / 1e6:.1f} MB) and {export_path.with_suffix('.json')}")


@click.command("evaluate-embedder")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_WEIGHTS, show_default=True)
@click.option("--heldout-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Crops of held-out types, <dir>/<type>/<i>.png; default: rendered now by the simulator.")
@click.option("--sim-crops-per-type", type=int, default=40, show_default=True, help="Crops rendered per held-out type.")
@click.option("--sim-seed", type=int, default=9000, show_default=True, help="Simulator seed of the rendered held-out crops.")
@click.option("--real-dir", type=click.Path(path_type=Path), default=DEFAULT_REAL_DIR, show_default=True,
              help="Pascal VOC photos (the microcontroller set); skipped when absent.")
@click.option("--n-groupings", type=int, default=100, show_default=True)
@click.option("--crops-per-type", type=int, default=8, show_default=True, help="Crops per type in each grouping.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's default).")
@click.option("--test-time-views", type=click.Choice(["1", "2", "4", "8"]), default=None,
              help="Override the sidecar's test-time views (flips/rotations averaged).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=Path("out/embedder_eval.json"), show_default=True)
@click.option("--update-sidecar", is_flag=True, help="Also write the metrics into the weights' JSON sidecar.")
def evaluate_embedder(weights, heldout_dir, sim_crops_per_type, sim_seed, real_dir, n_groupings, crops_per_type, seed,
                      threads, test_time_views, out_path, update_sidecar):
    """Grouping ARI on held-out simulated types and real crops, and embedding speed."""
    import numpy as np
    import torch

    from .data import load_crop_folder, load_voc_crops
    from .embedder import Embedder, sidecar_path
    from .evaluation import all_crops_ari, grouping_aris, time_embedding

    _setup_logging()
    if threads:
        torch.set_num_threads(threads)
    embedder = Embedder.from_weights(weights, source="evaluated")
    if test_time_views is not None:
        embedder.test_time_views = int(test_time_views)
    results: dict = {"weights": str(weights), "input_size_px": embedder.input_size_px,
                     "test_time_views": embedder.test_time_views, "recipe": _recipe(),
                     "protocol": {"n_groupings": n_groupings, "types_per_grouping": [2, 4], "crops_per_type": crops_per_type,
                                  "seed": seed, "kmeans": "sklearn KMeans, k = types drawn, n_init=10, random_state=0"}}
    with tempfile.TemporaryDirectory() as tmp:
        if heldout_dir is None:
            from sorterbot_cloud.sim.catalog import HELDOUT_ITEM_TYPES
            from sorterbot_cloud.sim.datasets import export_item_crops

            heldout_dir = Path(tmp) / "heldout"
            export_item_crops(heldout_dir, sim_crops_per_type, sim_seed, types=HELDOUT_ITEM_TYPES)
            results["heldout_source"] = f"simulator export_item_crops(n_per_type={sim_crops_per_type}, seed={sim_seed}, types=HELDOUT_ITEM_TYPES)"
        else:
            results["heldout_source"] = str(heldout_dir)
        sets = {"sim_heldout": load_crop_folder(heldout_dir)}
    if real_dir.is_dir():
        sets["real_microcontrollers"] = load_voc_crops(real_dir)
    else:
        log.warning("no real photos at %s: real-crop figure skipped", real_dir)
    rows = []
    for name, crop_set in sets.items():
        emb = embedder.embed(crop_set.crops)
        aris = grouping_aris(emb, crop_set.type_ids, n_groupings=n_groupings, crops_per_type=crops_per_type, seed=seed)
        entry = {"types": crop_set.type_names, "n_crops": len(crop_set), "ari_mean": float(aris.mean()),
                 "ari_median": float(np.median(aris)), "ari_min": float(aris.min()),
                 "fraction_perfect": float(np.mean(aris > 0.999)), "ari_all_crops": all_crops_ari(emb, crop_set.type_ids)}
        results[name] = entry
        rows.append((name, entry))
    default_threads = torch.get_num_threads()
    speed = {}
    for n_threads in sorted({1, default_threads}):
        torch.set_num_threads(n_threads)
        speed[f"threads_{n_threads}"] = time_embedding(embedder, sets["sim_heldout"].crops, batch_size=32, repeats=15)
    torch.set_num_threads(default_threads)
    speed["ms_per_crop_median"] = min(v["ms_per_crop_median"] for v in speed.values())
    speed["cpu"] = _cpu_name()
    results["speed"] = speed
    click.echo(f"embedder {weights} (input {embedder.input_size_px} px, {embedder.test_time_views} test-time views), {n_groupings} groupings of 2-4 types x {crops_per_type} crops")
    click.echo(f"{'set':<24}{'types':>6}{'crops':>7}{'ARI mean':>10}{'median':>8}{'min':>7}{'perfect':>9}{'all-crops ARI':>15}")
    for name, e in rows:
        click.echo(f"{name:<24}{len(e['types']):>6}{e['n_crops']:>7}{e['ari_mean']:>10.3f}{e['ari_median']:>8.3f}"
                   f"{e['ari_min']:>7.3f}{e['fraction_perfect']:>9.2f}{e['ari_all_crops']:>15.3f}")
    for key, value in speed.items():
        if key.startswith("threads_"):
            click.echo(f"speed, {key.split('_')[1]} torch thread(s): median {value['ms_per_crop_median']:.2f} ms per crop "
                       f"(batch {value['batch_size']}, {value['repeats']} repeats, letterboxing included)")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    click.echo(f"wrote {out_path}")
    if update_sidecar and sidecar_path(weights).is_file():
        meta = json.loads(sidecar_path(weights).read_text())
        meta["metrics"] = {k: results[k] for k in ("protocol", "heldout_source", "sim_heldout", "real_microcontrollers", "speed") if k in results}
        meta["metrics"]["command"] = results["recipe"]
        sidecar_path(weights).write_text(json.dumps(meta, indent=2) + "\n")
        click.echo(f"updated {sidecar_path(weights)}")


@click.command("calibrate-grouping")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_WEIGHTS, show_default=True)
@click.option("--crops-dir", "crops_dirs", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True, required=True,
              help="Crops <dir>/<type>/<i>.png of types the weights were not trained on (repeatable). Never the reported evaluation set.")
@click.option("--distances", default="0.1,0.15,0.175,0.2,0.225,0.25,0.3", show_default=True, help="Comma list of cosine distances to try.")
@click.option("--n-trials", type=int, default=400, show_default=True, help="Simulated sessions per crop folder.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads.")
@click.option("--update-sidecar", is_flag=True, help="Write the best distance (mean share over the folders) as group_cosine_distance.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=Path("out/grouping_calibration.json"), show_default=True)
def calibrate_grouping(weights, crops_dirs, distances, n_trials, seed, threads, update_sidecar, out_path):
    """Choose the cosine distance that separates item kinds for these weights.

    Simulates sessions from the crops (2-4 types, 3-8 items, 1-4 containers), groups the
    items with the planner's largest-gap rule and with each distance, and prints the share
    sorted correctly (docs/design.rst) per rule, plus the ceiling with the right number of groups.
    """
    import numpy as np
    import torch

    from .data import load_crop_folder
    from .embedder import Embedder, sidecar_path
    from .evaluation import grouping_choice_shares

    _setup_logging()
    torch.set_num_threads(threads)
    try:
        grid = [float(v) for v in distances.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected a comma list of numbers, got {distances!r}", param_hint="--distances") from None
    if not grid or not all(0 < d <= 2 for d in grid):
        raise click.BadParameter("distances must be cosine distances in (0, 2]", param_hint="--distances")
    embedder = Embedder.from_weights(weights, source="calibrated")
    per_dir = {}
    for folder in crops_dirs:
        crop_set = load_crop_folder(folder)
        shares = grouping_choice_shares(embedder.embed(crop_set.crops), crop_set.type_ids, grid, n_trials=n_trials, seed=seed)
        per_dir[str(folder)] = shares
    names = list(next(iter(per_dir.values())))
    mean = {name: float(np.mean([shares[name] for shares in per_dir.values()])) for name in names}
    click.echo(f"share of {n_trials} simulated sessions per folder sorted correctly ({weights})")
    click.echo(f"{'rule':<10}" + "".join(f"{Path(f).name[:22]:>24}" for f in per_dir) + f"{'mean':>8}")
    for name in names:
        click.echo(f"{name:<10}" + "".join(f"{shares[name]:>24.3f}" for shares in per_dir.values()) + f"{mean[name]:>8.3f}")
    best = max(grid, key=lambda d: (mean[f"d={d:g}"], -abs(d - float(np.median(grid)))))
    click.echo(f"best distance {best:g}: {mean[f'd={best:g}']:.3f} (largest-gap rule {mean['gap']:.3f}, right number of groups {mean['oracle_k']:.3f})")
    result = {"weights": str(weights), "n_trials": n_trials, "seed": seed, "per_folder": per_dir, "mean": mean,
              "best_distance": best, "command": _recipe()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"wrote {out_path}")
    if update_sidecar:
        if not sidecar_path(weights).is_file():
            raise click.UsageError(f"{weights} has no sidecar {sidecar_path(weights)} to update")
        meta = json.loads(sidecar_path(weights).read_text())
        meta["group_cosine_distance"] = best
        meta["group_calibration"] = {k: result[k] for k in ("per_folder", "mean", "n_trials", "seed", "command")}
        sidecar_path(weights).write_text(json.dumps(meta, indent=2) + "\n")
        click.echo(f"updated {sidecar_path(weights)}: group_cosine_distance = {best:g}")


@click.command("crops-from-coco")
@click.option("--dataset", "datasets", multiple=True, required=True, metavar="ANNOTATIONS.json:IMAGES_DIR",
              help="A COCO dataset whose annotations carry a `type` (the simulator's `simulate dataset`); repeatable.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Receives <type>/<i>.png and index.json.")
@click.option("--min-visible", type=float, default=0.95, show_default=True, help="Skip boxes less visible than this.")
@click.option("--min-side-px", type=int, default=12, show_default=True)
@click.option("--margin", type=float, default=0.1, show_default=True, help="Context margin (fraction of the box side).")
@click.option("--max-per-type", type=int, default=None, help="At most this many crops per type, all datasets together.")
@click.option("--allow-heldout-types", is_flag=True, help="Also cut the simulator's held-out item types.")
def crops_from_coco(datasets, out_dir, min_visible, min_side_px, margin, max_per_type, allow_heldout_types):
    """Cut embedder training crops per item type out of typed COCO detection datasets."""
    from .data import export_crops_from_coco

    exclude = () if allow_heldout_types else _heldout_types()
    total: dict[str, int] = {}
    for spec in datasets:
        annotations, sep, images_dir = spec.rpartition(":")
        if not sep or not annotations:
            raise click.BadParameter(f"{spec!r} is not ANNOTATIONS.json:IMAGES_DIR", param_hint="--dataset")
        total = export_crops_from_coco(annotations, images_dir, out_dir, min_visible_fraction=min_visible, min_side_px=min_side_px,
                                       margin=margin, max_per_type=max_per_type, exclude_types=exclude, start_counts=total)
        click.echo(f"{annotations}: {sum(total.values())} crops so far")
    click.echo(f"wrote {sum(total.values())} crops of {len(total)} types to {out_dir}: {dict(sorted(total.items()))}")


@click.command("crops-from-voc")
@click.option("--voc", "voc_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of labelled photos (Pascal VOC; the object name is the kind).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Receives <prefix><kind>/<i>.png and index.json.")
@click.option("--prefix", default="", help="Put before each kind's folder name (e.g. mc_), to mix sets in one folder.")
@click.option("--margin", type=float, default=0.1, show_default=True, help="Context margin (the service's crop_margin).")
@click.option("--folds", type=int, default=None, help="Split the photos into this many parts (k-fold by photo) ...")
@click.option("--fold", type=int, default=0, show_default=True, help="... and leave out part FOLD (crops of the others are cut).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split (the same as evaluate-real-grouping's).")
@click.option("--part", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="With --folds: train cuts every fold but FOLD (training crops), test only FOLD (crops to calibrate "
                   "or score on).")
def crops_from_voc(voc_dir, out_dir, prefix, margin, folds, fold, seed, part):
    """Cut embedder training crops per kind out of labelled photos (optionally all but one fold of them)."""
    from .data import export_crops_from_voc, voc_photo_fold

    try:
        photos = voc_photo_fold(voc_dir, folds, fold, part, seed)
    except (FileNotFoundError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from exc
    counts = export_crops_from_voc(photos, out_dir, prefix=prefix, margin=margin)
    click.echo(f"wrote {sum(counts.values())} crops of {len(counts)} kinds from {len(photos)} photos to {out_dir}: "
               f"{dict(sorted(counts.items()))}")


@click.command("evaluate-real-grouping")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_WEIGHTS, show_default=True)
@click.option("--voc", "voc_dirs", multiple=True, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of labelled photos (Pascal VOC; the object name is the kind), e.g. a test split. Repeatable.")
@click.option("--margin", type=float, default=0.1, show_default=True, help="Crop context margin (the service's crop_margin).")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's default).")
@click.option("--folds", type=int, default=None, help="Score only part FOLD of a k-fold split by photo of each --voc folder ...")
@click.option("--fold", type=int, default=0, show_default=True, help="... (the photos crops-from-voc --folds K --fold FOLD leaves out).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.option("--group-distance", "group_distances", type=click.FloatRange(0.0, 2.0, min_open=True), multiple=True,
              help="Also score per-photo grouping at this cosine distance (repeatable; to choose one, on photos never scored).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=Path("out/real_grouping.json"), show_default=True)
def evaluate_real_grouping(weights, voc_dirs, margin, threads, folds, fold, seed, group_distances, out_path):
    """Grouping of real items: crop ARI (true number of kinds) and per-photo grouping with the service's own number."""
    import numpy as np
    import torch

    from sorterbot_cloud.imaging import read_image_file

    from .crops import crop_items
    from .data import voc_photo_fold
    from .embedder import Embedder
    from .evaluation import all_crops_ari, photo_grouping

    _setup_logging()
    if threads:
        torch.set_num_threads(threads)
    embedder = Embedder.from_weights(weights, source="evaluated")
    results = {"weights": str(weights), "group_cosine_distance": embedder.group_distance, "recipe": _recipe(),
               "split": None if folds is None else {"folds": folds, "fold": fold, "seed": seed}, "sets": {}}
    click.echo(f"{'set':<44}{'photos':>7}{'crops':>7}{'crop ARI':>9}{'photo ARI (own k)':>19}{'k exact':>9}{'ARI (true k)':>13}")
    for voc in voc_dirs:
        per_photo_emb, per_photo_types, all_names = [], [], []
        try:
            labelled = voc_photo_fold(voc, folds, fold, "test", seed)
        except (FileNotFoundError, ValueError) as exc:
            raise click.BadParameter(f"{voc}: {exc}", param_hint="--voc") from exc
        for image_path, boxes, names in labelled:
            per_photo_emb.append(embedder.embed(crop_items(read_image_file(image_path), boxes, margin=margin)))
            per_photo_types.append(names)
            all_names.extend(names)
        kinds = sorted(set(all_names))
        type_ids = np.asarray([kinds.index(n) for n in all_names])
        photo_ids = [np.asarray([kinds.index(n) for n in t]) for t in per_photo_types]
        photos = photo_grouping(per_photo_emb, photo_ids, embedder.group_distance)
        entry = {"kinds": kinds, "n_crops": len(all_names), "n_photos": len(per_photo_emb),
                 "crop_ari_true_k": all_crops_ari(np.concatenate(per_photo_emb), type_ids), "per_photo": photos}
        if group_distances:
            entry["per_photo_at_distance"] = {f"{d:g}": photo_grouping(per_photo_emb, photo_ids, d) for d in group_distances}
        results["sets"][str(voc)] = entry
        pp = {k: (f"{photos[k]:.3f}" if photos["photos"] else "n/a") for k in ("ari_own_k_mean", "k_exact", "ari_true_k_mean")}
        click.echo(f"{str(voc)[-44:]:<44}{photos['photos']:>7}{len(all_names):>7}{entry['crop_ari_true_k']:>9.3f}"
                   f"{pp['ari_own_k_mean']:>19}{pp['k_exact']:>9}{pp['ari_true_k_mean']:>13}")
        for d, at in entry.get("per_photo_at_distance", {}).items():
            if at["photos"]:
                click.echo(f"{'  at distance ' + d:<58}{at['ari_own_k_mean']:>19.3f}{at['k_exact']:>9.3f}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    click.echo(f"wrote {out_path}")
