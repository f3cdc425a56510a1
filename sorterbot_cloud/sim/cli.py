"""``sorterbot-cloud simulate ...``: sessions, COCO datasets, item crops, views, benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sorterbot_cloud.sim.textures import EXTRA_TRAIN_TEXTURES


def _pulse_widths(spec: str) -> list[float]:
    """Parse ``start:stop:step`` (inclusive stop) or a comma-separated list of pulse widths."""
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            n = int(round((stop - start) / step)) + 1
            return [start + i * step for i in range(n)]
        return [float(v) for v in spec.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected start:stop:step or a comma list, got {spec!r}") from exc


@click.group()
def simulate() -> None:
    """Simulate the arm's camera: sessions with ground truth, datasets, views, benchmark."""


@simulate.command("session")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--items", "n_items", type=int, default=6, show_default=True)
@click.option("--item-types", "n_item_types", type=int, default=3, show_default=True, help="Number of distinct item types.")
@click.option("--types", "types", default=None, help="Comma list: the type of every item (overrides --items/--item-types).")
@click.option("--containers", "n_containers", type=int, default=2, show_default=True)
@click.option("--distractors", "n_distractors", type=int, default=1, show_default=True)
@click.option("--pulse-widths", default="1000:1950:50", show_default=True, help="start:stop:step (inclusive) or comma list, µs.")
@click.option("--width", "width_px", type=int, default=1640, show_default=True)
@click.option("--height", "height_px", type=int, default=1232, show_default=True)
@click.option("--heldout", is_flag=True, help="Use held-out item types and table textures.")
@click.option("--arm-id", default="ARM001", show_default=True)
@click.option("--session-id", default=None)
def session_cmd(out_dir, seed, n_items, n_item_types, types, n_containers, n_distractors, pulse_widths, width_px, height_px, heldout, arm_id, session_id):
    """Render one session: <pw>.jpg frames, ground_truth.json, contact_sheet.png."""
    from sorterbot_cloud.sim.session import simulate_session

    path = simulate_session(out_dir, seed, n_items=n_items, n_item_types=n_item_types, n_containers=n_containers,
                            item_types=types.split(",") if types else None, pulse_widths=_pulse_widths(pulse_widths),
                            width_px=width_px, height_px=height_px, heldout=heldout, n_distractors=n_distractors,
                            arm_id=arm_id, session_id=session_id)
    truth = json.loads(path.read_text())
    click.echo(f"wrote {len(truth['frames'])} frames, {len(truth['objects'])} objects: {path}")


@simulate.command("dataset")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--images", "n_images", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--split", type=click.Choice(["train", "val", "heldout", "all"]), default="train", show_default=True)
@click.option("--width", "width_px", type=int, default=1024, show_default=True)
@click.option("--height", "height_px", type=int, default=768, show_default=True)
@click.option("--frames-per-scene", type=int, default=4, show_default=True)
@click.option("--items", "items_range", type=(int, int), default=(2, 10), show_default=True, help="Items per scene, MIN MAX.")
@click.option("--containers", "containers_range", type=(int, int), default=(0, 3), show_default=True,
              help="Containers per scene, MIN MAX (e.g. 3 4 for crowded scenes, where items overlap containers in the image).")
@click.option("--distractors", "distractors_range", type=(int, int), default=(0, 3), show_default=True,
              help="Distractors (pencils, sticky notes, rulers: neither item nor container, never boxed) per scene, MIN MAX; "
                   "more of them teach the detector what not to box.")
@click.option("--table-markings", "markings_range", type=(int, int), default=(0, 0), show_default=True,
              help="Flat markings painted on the table (rings, loops, blobs, strokes; never boxed) per scene, MIN MAX.")
@click.option("--procedural", "n_procedural", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also draw items from this many procedural types (proc_0000, ...), each as likely as a catalogue type.")
@click.option("--procedural-start", type=click.IntRange(min=0), default=0, show_default=True, help="Index of the first procedural type.")
@click.option("--extra-textures", multiple=True, type=click.Choice(list(EXTRA_TRAIN_TEXTURES)),
              help="Also draw tables from these training-only textures (repeatable; e.g. laminate: plain desks, half near-white).")
@click.option("--split-textures/--only-extra-textures", default=True, show_default=True,
              help="Draw the split's own table textures too, or only the --extra-textures.")
def dataset_cmd(out_dir, n_images, seed, split, width_px, height_px, frames_per_scene, items_range, containers_range,
                distractors_range, markings_range, n_procedural, procedural_start, extra_textures, split_textures):
    """Write a COCO detection dataset (images/ + annotations.json)."""
    from sorterbot_cloud.sim.catalog import procedural_type_names
    from sorterbot_cloud.sim.datasets import export_coco_dataset

    path = export_coco_dataset(out_dir, n_images, seed, split=split, width_px=width_px, height_px=height_px, frames_per_scene=frames_per_scene,
                               items_range=items_range, containers_range=containers_range, distractors_range=distractors_range,
                               markings_range=markings_range, procedural_types=procedural_type_names(n_procedural, procedural_start),
                               extra_textures=extra_textures, split_textures=split_textures)
    click.echo(f"wrote {path}")


@simulate.command("crops")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--per-type", "n_per_type", type=int, default=50, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--types", default=None, help="Comma list of item types (default: all, train and held-out).")
@click.option("--split", type=click.Choice(["train", "heldout", "all", "none"]), default="all", show_default=True,
              help="Catalogue types of a split (ignored with --types); none: only --procedural types.")
@click.option("--procedural", "n_procedural", type=click.IntRange(min=0), default=0, show_default=True,
              help="Add this many procedural training types (proc_0000, ...: random shapes, colours and patterns).")
@click.option("--procedural-start", type=click.IntRange(min=0), default=0, show_default=True, help="Index of the first procedural type (and of the first marked one).")
@click.option("--procedural-marked", "n_marked", type=click.IntRange(min=0), default=0, show_default=True,
              help="Add this many marked procedural types (procm_0000, ...: as --procedural, plus random marks on every instance).")
@click.option("--width", "width_px", type=int, default=1640, show_default=True)
@click.option("--height", "height_px", type=int, default=1232, show_default=True)
def crops_cmd(out_dir, n_per_type, seed, types, split, n_procedural, procedural_start, n_marked, width_px, height_px):
    """Write item crops per type (<type>/<i>.png + index.json)."""
    from sorterbot_cloud.sim.catalog import HELDOUT_ITEM_TYPES, ITEM_TYPES, TRAIN_ITEM_TYPES, procedural_type_names
    from sorterbot_cloud.sim.datasets import export_item_crops

    splits = {"train": TRAIN_ITEM_TYPES, "heldout": HELDOUT_ITEM_TYPES, "all": tuple(ITEM_TYPES), "none": ()}
    chosen = (list(types.split(",") if types else splits[split]) + list(procedural_type_names(n_procedural, procedural_start))
              + list(procedural_type_names(n_marked, procedural_start, marked=True)))
    if not chosen:
        raise click.UsageError("no item types chosen: give --types, a --split other than none, --procedural N or --procedural-marked N")
    path = export_item_crops(out_dir, n_per_type, seed, types=chosen, width_px=width_px, height_px=height_px)
    click.echo(f"wrote {path}")


@simulate.command("types")
def types_cmd():
    """List item, container and distractor types and the train / held-out splits."""
    from sorterbot_cloud.sim import catalog, textures

    for name, t in catalog.ALL_TYPES.items():
        split = "train" if name in catalog.TRAIN_ITEM_TYPES else "heldout" if name in catalog.HELDOUT_ITEM_TYPES else "-"
        click.echo(f"{t.kind:10s} {name:14s} {split:8s} {t.description}")
    click.echo(f"textures train: {', '.join(textures.TRAIN_TEXTURES)}; heldout: {', '.join(textures.HELDOUT_TEXTURES)}; "
               f"training-only extras: {', '.join(textures.EXTRA_TRAIN_TEXTURES)}")


@simulate.command("views")
@click.argument("model")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--colour", default=None, help="r,g,b in 0..1 for mesh files.")
@click.option("--size-mm", type=float, default=None, help="Rescale the model's largest side to this.")
@click.option("--category", default="item", show_default=True)
@click.option("--width", "width_px", type=int, default=640, show_default=True)
@click.option("--height", "height_px", type=int, default=480, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def views_cmd(model, out_dir, colour, size_mm, category, width_px, height_px, seed):
    """Render MODEL (a type name, STL/OBJ/PLY or STEP file) from every azimuth/altitude/tilt with COCO + YOLO boxes."""
    from sorterbot_cloud.sim.views import render_views

    rgb = tuple(float(v) for v in colour.split(",")) if colour else None
    path = render_views(model, out_dir, colour=rgb, size_mm=size_mm, category=category, width_px=width_px, height_px=height_px, seed=seed)
    click.echo(f"wrote {path}")


@simulate.command("bench")
@click.option("--width", "width_px", type=int, default=1640, show_default=True)
@click.option("--height", "height_px", type=int, default=1232, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--frames", "n_frames", type=int, default=20, show_default=True)
def bench_cmd(width_px, height_px, repeats, n_frames):
    """Print the simulator's frames per second (median over repeated sessions) and per-stage medians."""
    from sorterbot_cloud.sim.bench import benchmark

    res = benchmark(width_px=width_px, height_px=height_px, repeats=repeats, n_frames=n_frames)
    click.echo(f"simulator at {width_px}x{height_px}: {res['fps_median']} frames/s (median of {repeats} sessions of {n_frames} frames; "
               f"all: {res['fps_all']})")
    click.echo(f"per frame medians: render {res['render_ms']} ms, photo effects {res['effects_ms']} ms, JPEG {res['encode_ms']} ms, "
               f"boxes {res['boxes_ms']} ms; scene set-up {res['setup_ms']} ms per session")
