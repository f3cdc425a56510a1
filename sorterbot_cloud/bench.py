"""Benchmarks and the session-level evaluation of the service (issue 4's figures).

- ``sorterbot-cloud bench ingest``: per-stage medians (decode, detect, embed, store) of
  :meth:`Service.process_frame` over repeated runs on 1640x1232 simulated frames, with a
  reference run measured in the same process (torchvision's Faster R-CNN
  ResNet-50-FPN, the architecture of the original Detectron2 model, at its default
  800 px input, randomly initialised: only its speed matters) so the detector figure is
  also a ratio that holds across machines; plus the process RSS with the models loaded
  (psutil).
- ``sorterbot-cloud bench trigger``: median of :meth:`Service.commands_for_session` on a
  20-frame session, calibrated and legacy constants.
- ``sorterbot-cloud bench all``: both, then ``evaluate-sessions``.
- ``sorterbot-cloud evaluate-sessions --n 20 --seed-start 1000``: simulated sessions with
  held-out seeds, item types and textures (3 to 8 items of 2 to 4 types, 1 to 4
  containers), each ingested once and triggered in both geometry modes, scored with
  :func:`sorterbot_cloud.evaluation.score_session`; prints a table, writes JSON.
- ``sorterbot-cloud tune-grouping``: the grouping's weights and distance
  (``Settings.grouping_size_weight``, ``grouping_height_weight``, ``grouping_distance``,
  ``grouping_colour_weight``) on tuning sessions
  (seeds from :data:`TUNING_SEED_START`, never those of the reported figures): each
  session is ingested once, then only its calibrated grouping is replayed per grid point.

Everything runs in process on the real service code, the real models (from their weight
files; a clear error when they are missing) and a real PostgreSQL (embedded in a
temporary folder unless ``PG_CONN`` is set). Simulated sessions are cached under
``--cache`` so reruns skip rendering.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click
import numpy as np

from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.load_test import load as load_command
from sorterbot_cloud.sim.sessions import session_spec, simulated_session

#: Frame size of the reference arm's camera (Raspberry Pi camera v2, DESIGN.md).
FRAME_WIDTH_PX, FRAME_HEIGHT_PX = 1640, 1232
#: Issue 4's targets, printed next to the measured figures.
TARGETS = {
    "ingest_median_ms": 300.0,
    "trigger_median_ms": 100.0,
    "rss_mb": 1536.0,
    "share_counts_exact": 0.95,
    "position_p95_mm": 15.0,
    "share_sorted_correctly": 0.95,
}
DEFAULT_CACHE = Path("out") / "bench" / "sessions"
LEGACY_DROP_KEYS = ("camera", "zero_pw", "r_min_mm", "r_max_mm")


def _median(values) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclasses.dataclass
class BenchContext:
    """A service on a real database with the real models, for in-process measurements."""

    settings: object
    service: object
    database: object
    model_load_s: float


@contextmanager
def bench_context(data_dir: Path | None = None, detector=None, embedder=None) -> Iterator[BenchContext]:
    """Start the database (embedded under a temporary folder unless ``PG_CONN`` is set),
    load the models once and yield a :class:`BenchContext`.

    Parameters
    ----------
    detector : object, optional
        Use it instead of loading the detector (e.g. :class:`GroundTruthDetector`).
    embedder : object, optional
        Use it instead of loading the embedder.

    Raises
    ------
    click.ClickException
        If a model's weights are missing.
    """
    import torch

    from sorterbot_cloud.config import Settings
    from sorterbot_cloud.db import Database, Repository
    from sorterbot_cloud.service import Service
    from sorterbot_cloud.storage import DiskArchive

    grad_was_enabled = torch.is_grad_enabled()
    torch.set_grad_enabled(False)  # inference only; restored on exit (the mode is process-visible state of this thread)
    with contextlib.ExitStack() as restore, tempfile.TemporaryDirectory(prefix="sorterbot-bench-") as tmp:
        restore.callback(torch.set_grad_enabled, grad_was_enabled)
        settings = Settings.load(data_dir=str(data_dir or Path(tmp)))
        started = time.perf_counter()
        try:
            from sorterbot_cloud.detection import load_detector
            from sorterbot_cloud.embedding import load_embedder

            detector = detector if detector is not None else load_detector(settings)
            embedder = embedder if embedder is not None else load_embedder(settings)
        except FileNotFoundError as exc:
            raise click.ClickException(
                f"model weights missing: {exc}. Train or fetch them first (weights/README.md); nothing is downloaded."
            ) from exc
        model_load_s = time.perf_counter() - started
        database = Database.from_settings(settings)
        try:
            service = Service(
                settings, detector=detector, embedder=embedder, repository=Repository(database.pool),
                archive=DiskArchive.from_settings(settings),
            )
            yield BenchContext(settings, service, database, model_load_s)
        finally:
            database.close()


def _first_laid_out(cache: Path, seed: int, tries: int = 20, **kwargs) -> Path:
    """:func:`simulated_session` for ``seed``, or the next seed whose scene can be laid out
    (deterministic: the same seeds are tried in the same order).

    Raises
    ------
    BadRequest
        If none of ``tries`` seeds lays out.
    """
    for k in range(tries):
        try:
            return simulated_session(cache, seed + k, **kwargs)
        except BadRequest:
            continue
    raise BadRequest(f"no scene with {kwargs} could be laid out for seeds {seed}..{seed + tries - 1}")


def _frames(folder: Path) -> list[Path]:
    from sorterbot_cloud.service_cli import session_frames

    return session_frames(folder)


class GroundTruthDetector:
    """Answers a simulated frame's ground-truth boxes instead of running a model.

    Used by ``evaluate-sessions --detector ground-truth`` to measure the stages after
    detection (geometry, dedup, clustering, planning) on their own. Boxes of items and
    containers whose visible fraction is at least ``min_visible_fraction`` are returned
    with score 0.99; distractors are left out. Call :meth:`use` with the session's
    ground truth and the frame's name before each ``detect``.

    Parameters
    ----------
    min_visible_fraction : float
        Least share of the object's projected area inside the frame and unoccluded.
    """

    SCORE = 0.99

    def __init__(self, min_visible_fraction: float = 0.5) -> None:
        self.min_visible_fraction = min_visible_fraction
        self._boxes: dict[str, list[dict]] = {}
        self._current: str | None = None

    def use(self, ground_truth: dict, image_name: str) -> None:
        """Answer the boxes of frame ``image_name`` of ``ground_truth`` on the next ``detect``."""
        self._boxes = {f["image_name"]: f["boxes"] for f in ground_truth["frames"]}
        self._current = image_name

    def detect(self, image: np.ndarray):
        from sorterbot_cloud.structures import Detections, class_id_of

        height, width = image.shape[:2]
        kept = [b for b in self._boxes.get(self._current, [])
                if b["class"] in ("item", "container") and b.get("visible_fraction", 1.0) >= self.min_visible_fraction]
        if not kept:
            return Detections.empty()
        boxes = np.array([b["box_xyxy"] for b in kept], np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        return Detections(boxes, np.full(len(kept), self.SCORE, np.float32), [class_id_of(b["class"]) for b in kept])


def ingest_session(service, folder: Path, arm_id: str, session_id: str) -> list[dict]:
    """Ingest every frame of a session folder; returns the responses."""
    ground_truth = None
    if isinstance(service.detector, GroundTruthDetector):
        ground_truth = json.loads((Path(folder) / "ground_truth.json").read_text())
    out = []
    for p in _frames(folder):
        if ground_truth is not None:
            service.detector.use(ground_truth, p.name)
        out.append(service.process_frame(arm_id, session_id, p.name, p.read_bytes()))
    return out


def stored_frame_count(service, arm_id: str, session_id: str) -> int:
    """How many frames of a session the service's database holds (0 for an unknown session)."""
    from sorterbot_cloud.errors import UnknownSession

    try:
        return len(service.repository.session_frames(arm_id, session_id))
    except UnknownSession:
        return 0


def legacy_constants_of(constants: dict) -> dict:
    """The original keys only (no calibrated camera): the legacy geometry."""
    return {k: v for k, v in constants.items() if k not in LEGACY_DROP_KEYS}


def rss_mb() -> float:
    """Resident set size of this process (MiB), psutil."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def rss_file_mb() -> float:
    """The file-backed part of this process's resident set (MiB): pages of mapped files,
    mostly shared libraries (psutil's ``shared``, Linux ``RssFile + RssShmem``). They can
    be shared with other processes and dropped by the kernel under pressure; the rest of
    the RSS is the process's own (anonymous) memory."""
    import psutil

    return getattr(psutil.Process().memory_info(), "shared", 0) / 2**20


def peak_rss_mb() -> float:
    """Largest resident set size this process has had so far (MiB): ``getrusage``'s
    ``ru_maxrss`` (KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_detector_ms(images: list[np.ndarray], repeats: int) -> float:
    """Median forward time (ms) of torchvision's Faster R-CNN ResNet-50-FPN (random weights,
    default 800 px input, BatchNorm folded and the backbone channels-last like the service's
    detector) on the same frames, in this process."""
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from sorterbot_cloud.detection.torchvision_detector import backbone_channels_last, fuse_conv_bn

    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3).eval()
    fuse_conv_bn(model)
    backbone_channels_last(model)  # inference form of the shipped detector
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float().div(255) for im in images]
    times = []
    with torch.inference_mode():
        model([tensors[0]])  # warm-up
        for _ in range(repeats):
            for t in tensors:
                start = time.perf_counter()
                model([t])
                times.append((time.perf_counter() - start) * 1e3)
    return _median(times)


#: The product's bars for one ingest (2 threads) and the process with its models loaded,
#: printed next to the measured figures of ``bench ingest``.
PRODUCT_BARS = {"ingest_median_ms": 120.0, "rss_mb": 600.0}
#: Where ``bench ingest`` keeps the exported graphs it runs (``--onnx-cache``).
DEFAULT_ONNX_CACHE = Path("out") / "bench" / "onnx"
INGEST_RUNTIMES = ("torch", "onnxruntime")


def load_models(runtime: str, settings, onnx_cache: Path | None = None) -> tuple:
    """The detector and embedder ``settings`` ask for, run by ``runtime``.

    Parameters
    ----------
    runtime : {'torch', 'onnxruntime'}
    settings : Settings
        ``torch_threads`` also sets ONNX Runtime's intra-op threads.
    onnx_cache : path, optional
        Where graphs are exported when none matches (default ``<data_dir>/onnx``).

    Returns
    -------
    (detector, embedder)
    """
    if runtime == "onnxruntime":
        from sorterbot_cloud.detection.onnx_detector import OnnxDetector
        from sorterbot_cloud.embedding.onnx_embedder import OnnxEmbedder

        return (OnnxDetector.from_settings(settings, cache_dir=onnx_cache),
                OnnxEmbedder.from_settings(settings, cache_dir=onnx_cache))
    from sorterbot_cloud.detection import load_detector
    from sorterbot_cloud.embedding import load_embedder

    settings = dataclasses.replace(settings, inference_runtime="torch")
    return load_detector(settings), load_embedder(settings)


def _models_rss(runtime: str, threads: int | None, frame: str, onnx_cache: str) -> dict:
    """In a fresh process: load one runtime's models, ingest-run one frame (detect, crop, embed)
    and return the RSS (MiB) then, and whether torch was imported."""
    import sys

    from sorterbot_cloud.config import Settings
    from sorterbot_cloud.embedding import crop_items
    from sorterbot_cloud.imaging import decode_image

    settings = dataclasses.replace(Settings.load(), torch_threads=threads, inference_runtime=runtime)
    settings.apply_torch_threads()  # a no-op with onnxruntime: torch stays unloaded
    detector, embedder = load_models(runtime, settings, Path(onnx_cache))
    image = decode_image(Path(frame).read_bytes())
    detections = detector.detect(image)
    embedder.embed(crop_items(image, detections.boxes_xyxy))
    return {"rss_mb": round(rss_mb(), 1), "rss_file_mb": round(rss_file_mb(), 1),
            "rss_mb_peak": round(peak_rss_mb(), 1), "torch_imported": "torch" in sys.modules}


def models_rss_isolated(runtime: str, threads: int | None, frame: Path, onnx_cache: Path) -> dict:
    """:func:`_models_rss` in a spawned process (so each runtime's memory is its own)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_models_rss, runtime, threads, str(frame), str(onnx_cache)).result()


def run_ingest(n_frames: int, repeats: int, cache: Path, reference: bool, runtime: str = "torch",
               onnx_cache: Path = DEFAULT_ONNX_CACHE) -> dict:
    """Measure ingest; returns the figures (ms medians, RSS MiB).

    With ``runtime='both'`` both services (PyTorch eager and ONNX Runtime, the same
    thread count) ingest the same frames in the same process, alternating frame by frame,
    so the ratio of their medians holds on a busy machine; the RSS with each runtime's
    models loaded is measured in a fresh process of its own.
    """
    import torch

    from sorterbot_cloud.config import Settings
    from sorterbot_cloud.imaging import decode_image
    from sorterbot_cloud.service import Service

    runtimes = INGEST_RUNTIMES if runtime == "both" else (runtime,)
    threads = torch.get_num_threads()
    folder = _first_laid_out(cache, 4242, n_items=6, n_item_types=3, n_containers=2)
    frames = _frames(folder)
    step = max(1, len(frames) // n_frames)
    frames = frames[::step][:n_frames]
    settings = dataclasses.replace(Settings.load(), torch_threads=threads)
    loaded, load_s = {}, {}
    for rt in runtimes:
        started = time.perf_counter()
        try:
            loaded[rt] = load_models(rt, settings, onnx_cache)
        except FileNotFoundError as exc:
            raise click.ClickException(f"model weights missing: {exc} (weights/README.md); nothing is downloaded.") from exc
        load_s[rt] = round(time.perf_counter() - started, 2)
    first = loaded[runtimes[0]]
    with bench_context(detector=first[0], embedder=first[1]) as ctx:
        services = {runtimes[0]: ctx.service}
        for rt in runtimes[1:]:
            services[rt] = Service(ctx.settings, detector=loaded[rt][0], embedder=loaded[rt][1],
                                   repository=ctx.service.repository, archive=ctx.service.archive)
        rss_loaded, rss_loaded_file = rss_mb(), rss_file_mb()
        for rt, service in services.items():
            service.process_frame("BENCH", f"warmup-{rt}", frames[0].name, frames[0].read_bytes())
        stages: dict[str, dict[str, list[float]]] = {rt: {} for rt in runtimes}
        for r in range(repeats):
            for p in frames:
                data = p.read_bytes()
                for rt, service in services.items():
                    out = service.process_frame("BENCH", f"run{r}-{rt}", p.name, data)
                    for k, v in out["timings_ms"].items():
                        stages[rt].setdefault(k, []).append(v)
        figures = {
            "frames": len(frames),
            "repeats": repeats,
            "threads": threads,
            "runtimes": list(runtimes),
            "frame_size_px": [FRAME_WIDTH_PX, FRAME_HEIGHT_PX],
            "model_load_s": load_s,
            "rss_mb_process": round(rss_loaded, 1),
            "rss_file_mb_process": round(rss_loaded_file, 1),
            # the service's own peak: measured before the reference detector is loaded
            "rss_mb_peak": round(peak_rss_mb(), 1),
            "median_ms": {rt: {k: round(_median(v), 1) for k, v in stages[rt].items()} for rt in runtimes},
        }
        if len(runtimes) == 2:
            torch_ms, onnx_ms = figures["median_ms"]["torch"], figures["median_ms"]["onnxruntime"]
            figures["ratio_onnxruntime_to_torch"] = {k: round(onnx_ms[k] / torch_ms[k], 3)
                                                     for k in torch_ms if k in onnx_ms and torch_ms[k] > 0}
        if reference:
            images = [decode_image(p.read_bytes()) for p in frames]
            ref = reference_detector_ms(images, 1)
            figures["reference_detect_ms"] = round(ref, 1)
            figures["detect_ratio_to_reference"] = {rt: round(figures["median_ms"][rt]["detect"] / ref, 3)
                                                    for rt in runtimes}
    figures["models_loaded"] = {rt: models_rss_isolated(rt, threads, frames[0], onnx_cache) for rt in runtimes}
    return figures


def run_trigger(repeats: int, cache: Path, detector=None) -> dict:
    """Measure the session trigger on a 20-frame session; returns median ms per mode."""
    folder = _first_laid_out(cache, 4343, n_items=8, n_item_types=4, n_containers=4)
    gt = json.loads((folder / "ground_truth.json").read_text())
    constants = gt["arm_constants"]
    with bench_context(detector=detector) as ctx:
        responses = ingest_session(ctx.service, folder, "BENCH", "trigger")
        out = {"frames": len(_frames(folder)), "repeats": repeats,
               "detections": sum(len(r["detections"]) for r in responses),
               "detector": "ground-truth" if detector is not None else "model"}
        for mode, c in (("calibrated", constants), ("legacy", legacy_constants_of(constants))):
            ctx.service.commands_for_session("BENCH", "trigger", c)  # warm-up
            totals, stages = [], {}
            for _ in range(repeats):
                start = time.perf_counter()
                result = ctx.service.commands_for_session("BENCH", "trigger", c)
                totals.append((time.perf_counter() - start) * 1e3)
                for k, v in result["timings_ms"].items():
                    stages.setdefault(k, []).append(v)
            out[mode] = {"median_ms": round(_median(totals), 2),
                         "stage_median_ms": {k: round(_median(v), 2) for k, v in stages.items()},
                         "n_commands": len(result["commands"])}
    return out


def _print_ingest(fig: dict) -> None:
    runtimes = fig["runtimes"]
    click.echo(f"ingest: {fig['frames']} frames x {fig['repeats']} repeats, {FRAME_WIDTH_PX}x{FRAME_HEIGHT_PX} px, "
               f"{fig['threads']} threads")
    ratio = fig.get("ratio_onnxruntime_to_torch")
    click.echo("  stage    " + "".join(f"{rt + ' ms':>16}" for rt in runtimes) + ("   onnxruntime / torch" if ratio else ""))
    for stage in ("decode", "detect", "embed", "store", "total"):
        row = "".join(f"{fig['median_ms'][rt].get(stage, float('nan')):16.1f}" for rt in runtimes)
        click.echo(f"  {stage:<8}{row}" + (f"   {ratio.get(stage, float('nan')):8.3f}" if ratio else ""))
    for rt in runtimes:
        total = fig["median_ms"][rt]["total"]
        click.echo(f"  {rt}: total median {total:.1f} ms; issue target <= {TARGETS['ingest_median_ms']:.0f} ms -> "
                   f"{'met' if total <= TARGETS['ingest_median_ms'] else 'NOT met'}; product bar <= "
                   f"{PRODUCT_BARS['ingest_median_ms']:.0f} ms (2 threads) -> "
                   f"{'met' if total <= PRODUCT_BARS['ingest_median_ms'] else 'NOT met'}")
    if "reference_detect_ms" in fig:
        ratios = ", ".join(f"{rt} {v:.3f}" for rt, v in fig["detect_ratio_to_reference"].items())
        click.echo(f"  reference Faster R-CNN R50-FPN (800 px, torch) detect median {fig['reference_detect_ms']:.1f} ms; "
                   f"our detect / reference: {ratios}")
    for rt, mem in fig["models_loaded"].items():
        click.echo(f"  {rt}: RSS with models loaded (fresh process, one frame run) {mem['rss_mb']:.0f} MiB "
                   f"(file-backed, mostly shared libraries: {mem['rss_file_mb']:.0f} MiB; torch imported: "
                   f"{mem['torch_imported']}); product bar <= {PRODUCT_BARS['rss_mb']:.0f} -> "
                   f"{'met' if mem['rss_mb'] <= PRODUCT_BARS['rss_mb'] else 'NOT met'}; load {fig['model_load_s'][rt]:.1f} s")
    click.echo(f"  this process (all runtimes loaded) {fig['rss_mb_process']:.0f} MiB; peak while ingesting "
               f"{fig['rss_mb_peak']:.0f} MiB")


def _print_trigger(fig: dict) -> None:
    click.echo(f"trigger: {fig['frames']}-frame session ({fig['detections']} detections from the {fig['detector']} detector), "
               f"{fig['repeats']} repeats")
    for mode in ("calibrated", "legacy"):
        f = fig[mode]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in f["stage_median_ms"].items() if k != "total")
        click.echo(f"  {mode:<10} median {f['median_ms']:7.1f} ms ({stages}); {f['n_commands']} commands")
    worst = max(fig["calibrated"]["median_ms"], fig["legacy"]["median_ms"])
    click.echo(f"  target: median <= {TARGETS['trigger_median_ms']:.0f} ms -> {'met' if worst <= TARGETS['trigger_median_ms'] else 'NOT met'}")


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    click.echo(f"wrote {path}")


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@click.group()
@click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
def bench(threads: int | None) -> None:
    """Speed benchmarks of the service (medians; see also evaluate-sessions)."""
    _set_threads(threads)


bench.add_command(load_command)  # bench load: simulated arms against a running service (load_test.py)


@bench.command("ops")
def bench_ops() -> None:
    """Operations-layer overheads: request middleware, S3 upload queue, control-panel logging."""
    from sorterbot_cloud.ops.bench import main as run_ops_bench

    run_ops_bench()


@bench.command("oracle")
@click.option("--n", "n_sessions", default=20, show_default=True, type=int, help="Sessions per geometry mode.")
@click.option("--seed-start", default=1000, show_default=True, type=int)
def bench_oracle(n_sessions: int, seed_start: int) -> None:
    """Trigger-core CPU time and scores on oracle-box sessions (no rendering, no models)."""
    from sorterbot_cloud.evaluation import oracle_benchmark

    oracle_benchmark(n_sessions, seed_start)


@bench.command("ingest")
@click.option("--frames", "n_frames", default=5, show_default=True, type=int)
@click.option("--repeats", default=3, show_default=True, type=int)
@click.option("--no-reference", is_flag=True, help="Skip the Faster R-CNN R50-FPN reference run.")
@click.option("--cache", default=str(DEFAULT_CACHE), show_default=True, type=click.Path(path_type=Path))
@click.option("--json-out", default="out/bench/ingest.json", show_default=True, type=click.Path(path_type=Path))
@click.option("--runtime", type=click.Choice([*INGEST_RUNTIMES, "both"]), default="torch", show_default=True,
              help="What runs the models; both: PyTorch and ONNX Runtime on the same frames in this run, and their ratio.")
@click.option("--onnx-cache", default=str(DEFAULT_ONNX_CACHE), show_default=True, type=click.Path(path_type=Path),
              help="Where the ONNX graphs are exported when none matches beside the weights.")
def bench_ingest(n_frames: int, repeats: int, no_reference: bool, cache: Path, json_out: Path, runtime: str,
                 onnx_cache: Path) -> None:
    """Per-stage ingest medians on 1640x1232 frames, plus RSS with models loaded (per runtime)."""
    fig = run_ingest(n_frames, repeats, cache, reference=not no_reference, runtime=runtime, onnx_cache=onnx_cache)
    _print_ingest(fig)
    _write_json(json_out, fig)


@bench.command("trigger")
@click.option("--repeats", default=20, show_default=True, type=int)
@click.option("--cache", default=str(DEFAULT_CACHE), show_default=True, type=click.Path(path_type=Path))
@click.option("--json-out", default="out/bench/trigger.json", show_default=True, type=click.Path(path_type=Path))
@click.option("--detector", "detector_kind", type=click.Choice(["model", "ground-truth"]), default="model", show_default=True,
              help="ground-truth: ingest the simulator's boxes instead of running the detector.")
def bench_trigger(repeats: int, cache: Path, json_out: Path, detector_kind: str) -> None:
    """Median session-trigger time on a 20-frame session."""
    fig = run_trigger(repeats, cache, GroundTruthDetector() if detector_kind == "ground-truth" else None)
    _print_trigger(fig)
    _write_json(json_out, fig)


@bench.command("all")
@click.option("--n", "n_sessions", default=20, show_default=True, type=int)
@click.option("--cache", default=str(DEFAULT_CACHE), show_default=True, type=click.Path(path_type=Path))
@click.pass_context
def bench_all(ctx, n_sessions: int, cache: Path) -> None:
    """ingest, trigger, then evaluate-sessions."""
    ctx.invoke(bench_ingest, cache=cache)
    ctx.invoke(bench_trigger, cache=cache)
    ctx.invoke(evaluate_sessions, n_sessions=n_sessions, cache=cache)


@click.command("evaluate-sessions")
@click.option("--n", "n_sessions", default=20, show_default=True, type=int, help="Simulated sessions (>= 20 for the issue's figures).")
@click.option("--seed-start", default=None, type=int,
              help="Seeds seed_start .. seed_start + n - 1, never used for training data. "
                   "Default 1000 (heldout kinds) or 7000 (known kinds).")
@click.option("--kinds", type=click.Choice(["heldout", "known"]), default="heldout", show_default=True,
              help="heldout: item types and table textures never seen in training (the harder test); "
                   "known: the types and textures the shipped models were trained on, in new scenes.")
@click.option("--cache", default=str(DEFAULT_CACHE), show_default=True, type=click.Path(path_type=Path))
@click.option("--detector", "detector_kind", type=click.Choice(["model", "ground-truth"]), default="model", show_default=True,
              help="ground-truth: feed the simulator's boxes instead of the detector (measures the later stages alone).")
@click.option("--json-out", default=None, type=click.Path(path_type=Path),
              help="Default: out/bench/evaluate_sessions[_known][_gt_boxes].json.")
@click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Keep the service's database (embedded PostgreSQL) and frames here instead of a temporary "
                   "folder. A session whose frames are all stored there already is not ingested again: a rerun "
                   "replays the trigger on the stored detections (e.g. other trigger settings through "
                   "SORTERBOT_CONFIG) in a fraction of the time. Empty the folder after changing the detector.")
@click.option("--groups", "groups", type=click.Choice(["chosen", "true-kinds"]), default="chosen", show_default=True,
              help="true-kinds (a diagnostic, not the service's behaviour): group each session's items into its true "
                   "number of item kinds (at most one group per container) instead of the number the grouping "
                   "chooses: how well the features group once the number is right.")
def evaluate_sessions(n_sessions: int, seed_start: int | None, kinds: str, cache: Path, detector_kind: str,
                      json_out: Path | None, threads: int | None, data_dir: Path | None = None, groups: str = "chosen") -> None:
    """Score the service on simulated sessions in both geometry modes."""
    from sorterbot_cloud import evaluation

    _set_threads(threads)
    heldout = kinds == "heldout"
    if seed_start is None:
        seed_start = 1000 if heldout else 7000
    json_out = json_out or Path("out/bench") / (
        "evaluate_sessions" + ("" if heldout else "_known") + ("" if detector_kind == "model" else "_gt_boxes")
        + ("" if groups == "chosen" else "_true_kinds") + ".json"
    )
    rows, scores = [], {"calibrated": [], "legacy": []}
    detector = GroundTruthDetector() if detector_kind == "ground-truth" else None
    arm_id = "EVAL" if detector_kind == "model" else "EVAL_GT"  # one database may keep both kinds of detections
    replayed = 0
    with bench_context(data_dir=data_dir, detector=detector) as ctx:
        seed, done, skipped = seed_start - 1, 0, []
        while done < n_sessions:
            seed += 1
            spec = session_spec(seed)
            click.echo(f"session {done + 1}/{n_sessions} seed {seed}: {spec} ...", err=True)
            try:
                folder = simulated_session(cache, seed, heldout=heldout, **spec)
            except BadRequest as exc:  # the simulator could not lay out this scene
                click.echo(f"seed {seed} skipped: {exc}", err=True)
                skipped.append(seed)
                continue
            done += 1
            gt = json.loads((folder / "ground_truth.json").read_text())
            session_id = f"eval_{seed}" if heldout else f"eval_known_{seed}"
            if stored_frame_count(ctx.service, arm_id, session_id) == len(_frames(folder)):
                replayed += 1
            else:
                ingest_session(ctx.service, folder, arm_id, session_id)
            n_item_kinds = len({o["type"] for o in gt["objects"] if o["class"] == "item"})
            n_groups = n_item_kinds if groups == "true-kinds" else None
            for mode, constants in (("calibrated", gt["arm_constants"]), ("legacy", legacy_constants_of(gt["arm_constants"]))):
                result = ctx.service.commands_for_session(arm_id, session_id, constants, n_groups=n_groups)
                score = evaluation.score_session(gt, result)
                scores[mode].append(score)
                rows.append({"seed": seed, "mode": mode, **spec, "score": score.to_dict(), "n_item_kinds": n_item_kinds,
                             "n_item_groups": len({o["cluster_id"] for o in result["objects"]
                                                   if o["class"] == "item" and o["cluster_id"] is not None})})
    _print_evaluation(rows, scores)
    summary = {mode: evaluation.aggregate(s).to_dict() for mode, s in scores.items()}
    summary["all"] = evaluation.aggregate(scores["calibrated"] + scores["legacy"]).to_dict()
    if skipped:
        click.echo(f"seeds skipped (scene could not be laid out): {skipped}")
    if replayed:
        click.echo(f"{replayed} of {n_sessions} sessions were stored under {data_dir} already: trigger replayed on their detections")
    _write_json(json_out, {"n_sessions": n_sessions, "seed_start": seed_start, "seeds_skipped": skipped,
                           "kinds": kinds, "detector": detector_kind, "groups": groups,
                           "targets": TARGETS, "summary": summary, "sessions": rows})


def _echo_p95_by_class(aggregate) -> None:
    """Print the calibrated sessions' position p95 per class (an ``AggregateScore``)."""
    click.echo("calibrated position p95 by class: " + ", ".join(
        f"{c} {'-' if v is None else f'{v:.1f} mm'}" for c, v in aggregate.position_p95_by_class_mm.items()))


def pooled_scores(reports: list[dict]) -> dict[str, list]:
    """The session scores of several ``evaluate-sessions`` reports, per geometry mode.

    Parameters
    ----------
    reports : list of dict
        Parsed JSON files written by ``evaluate-sessions`` (``sessions``: rows with
        ``mode`` and ``score``).

    Returns
    -------
    dict
        ``{"calibrated": [SessionScore, ...], "legacy": [...]}``, in report order.

    Raises
    ------
    click.ClickException
        If a report has no ``sessions`` or a row is not a session score.
    """
    from sorterbot_cloud import evaluation

    fields = set(evaluation.SessionScore.__dataclass_fields__)
    scores: dict[str, list] = {"calibrated": [], "legacy": []}
    for i, report in enumerate(reports):
        rows = report.get("sessions") if isinstance(report, dict) else None
        if not isinstance(rows, list):
            raise click.ClickException(f"report {i + 1} has no 'sessions' list: not written by evaluate-sessions")
        for row in rows:
            score = row.get("score") if isinstance(row, dict) else None
            if not isinstance(score, dict) or row.get("mode") not in scores:
                raise click.ClickException(f"report {i + 1}: a row without a session score or a known mode: {str(row)[:80]}")
            try:
                scores[row["mode"]].append(evaluation.SessionScore(**{k: v for k, v in score.items() if k in fields}))
            except TypeError as exc:
                raise click.ClickException(f"report {i + 1}: {exc}") from None
    return scores


@click.command("pool-sessions")
@click.argument("reports", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def pool_sessions(reports: tuple[Path, ...]) -> None:
    """Pool the sessions of several evaluate-sessions JSON reports (e.g. four tuning sets)
    and print their figures as one set: counts exact, position p95 (over all matched
    objects of the calibrated sessions, and per class) and sorted correctly, per mode."""
    from sorterbot_cloud import evaluation

    loaded = [json.loads(Path(p).read_text()) for p in reports]
    scores = pooled_scores(loaded)
    click.echo(f"{'mode':<10} {'sessions':>8} {'counts exact':>12} {'pos p95':>8} {'sorted':>7}")
    for mode in ("calibrated", "legacy"):
        a = evaluation.aggregate(scores[mode])
        p95 = "-" if a.position_p95_mm is None else f"{a.position_p95_mm:.2f}"
        click.echo(f"{mode:<10} {a.n_sessions:>8} {a.share_counts_exact:>12.3f} {p95:>8} {a.share_sorted_correctly:>7.3f}")
    if any(row.get("mode") == "calibrated" and "position_errors_by_class_mm" not in row.get("score", {})
           for report in loaded for row in report["sessions"]):
        click.echo("calibrated position p95 by class: - (a report was written before evaluate-sessions kept errors per class)")
        return
    cal = evaluation.aggregate(scores["calibrated"])
    _echo_p95_by_class(cal)


def _echo_group_counts(rows: list[dict]) -> None:
    """Print, per geometry mode, how often the trigger formed the right number of item groups.

    Right means one group per true item kind, or one per true container when there are
    fewer containers (DESIGN.md, Sorting semantics); rows without the counts (reports
    written before they were kept) are left out.
    """
    parts = []
    for mode in ("calibrated", "legacy"):
        counted = [r for r in rows if r["mode"] == mode and "n_item_groups" in r]
        if not counted:
            return
        right = sum(r["n_item_groups"] == min(r["n_item_kinds"], r["score"]["n_true"]["container"]) for r in counted)
        parts.append(f"{mode} {right}/{len(counted)}")
    click.echo("sessions with one item group per kind (at most one per container): " + ", ".join(parts))


def _print_evaluation(rows: list[dict], scores: dict) -> None:
    from sorterbot_cloud import evaluation

    click.echo(f"{'seed':>5} {'mode':<10} {'items':>7} {'cont.':>6} {'p95 mm':>7} {'ARI':>5}  sorted")
    for row in rows:
        s = row["score"]
        items = f"{s['n_found']['item']}/{s['n_true']['item']}"
        conts = f"{s['n_found']['container']}/{s['n_true']['container']}"
        p95 = "-" if s["position_p95_mm"] is None else f"{s['position_p95_mm']:.1f}"
        ari = "-" if s["ari"] is None else f"{s['ari']:.2f}"
        sorted_ok = "yes" if s["sorted_correctly"] else "no: " + "; ".join(s["problems"])[:80]
        click.echo(f"{row['seed']:>5} {row['mode']:<10} {items:>7} {conts:>6} {p95:>7} {ari:>5}  {sorted_ok}")
    click.echo("")
    click.echo(f"{'mode':<10} {'sessions':>8} {'counts exact':>12} {'pos median':>10} {'pos p95':>8} {'sorted':>7} {'mean ARI':>8}")
    for mode in ("calibrated", "legacy"):
        a = evaluation.aggregate(scores[mode])
        med = "-" if a.position_median_mm is None else f"{a.position_median_mm:.1f}"
        p95 = "-" if a.position_p95_mm is None else f"{a.position_p95_mm:.1f}"
        ari = "-" if a.mean_ari is None else f"{a.mean_ari:.3f}"
        click.echo(f"{mode:<10} {a.n_sessions:>8} {a.share_counts_exact:>12.2f} {med:>10} {p95:>8} {a.share_sorted_correctly:>7.2f} {ari:>8}")
    both = evaluation.aggregate(scores["calibrated"] + scores["legacy"])
    cal = evaluation.aggregate(scores["calibrated"])
    _echo_p95_by_class(cal)
    _echo_group_counts(rows)
    click.echo("")
    click.echo(f"targets: counts exact >= {TARGETS['share_counts_exact']:.0%}: {both.share_counts_exact:.0%}; "
               f"calibrated position p95 <= {TARGETS['position_p95_mm']:.0f} mm: "
               f"{'-' if cal.position_p95_mm is None else f'{cal.position_p95_mm:.1f} mm'}; "
               f"sorted correctly >= {TARGETS['share_sorted_correctly']:.0%}: {both.share_sorted_correctly:.0%}")


#: First seeds of the tuning sessions of ``tune-grouping`` (held-out kinds, known kinds):
#: apart from the reported (1000+, 7000+) and validation (2000+, 8000+) seeds.
TUNING_SEED_START = {"heldout": 3000, "known": 9000}


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def tune_grouping_scores(service, sessions: list[tuple[dict, list, list]], size_weights, height_weights, group_distances,
                         colour_weights=(0.0,)) -> list[dict]:
    """Score the grouping of ingested sessions for every (size weight, height weight, distance, colour weight).

    Geometry and dedup run once per session (calibrated constants); only the grouping
    (:meth:`Service.group`) and the plan are redone per grid point, then each session is
    scored with :func:`sorterbot_cloud.evaluation.score_session`.

    Parameters
    ----------
    service : Service
    sessions : list of (ground_truth, stored detections, frame views)
    size_weights, height_weights, group_distances : sequence of float
    colour_weights : sequence of float, default (0.0,)
        ``Settings.grouping_colour_weight`` values (:func:`sorterbot_cloud.planner.item_features`).

    Returns
    -------
    list of dict
        One per grid point: ``size_weight``, ``height_weight``, ``group_distance``,
        ``colour_weight``, ``share_sorted_correctly``, ``mean_ari``.
    """
    import itertools

    from sorterbot_cloud import evaluation, geometry, planner
    from sorterbot_cloud.camera import ArmConstants
    from sorterbot_cloud.structures import CONTAINER_CLASS_ID, ITEM_CLASS_ID
    from sorterbot_cloud.trigger import command_record, object_record

    prepared = []
    for gt, stored, frames in sessions:
        constants = ArmConstants.from_mapping(gt["arm_constants"])
        objects = service.trigger.merge(geometry.locate(stored, constants), frames, constants)
        prepared.append((gt, {d.detection_id: d for d in stored}, objects))
    rows = []
    for ws, wh, gd, wc in itertools.product(size_weights, height_weights, group_distances, colour_weights):
        scores = []
        for gt, by_id, objects in prepared:
            items = [o for o in objects if o.class_id == ITEM_CLASS_ID]
            containers = [o for o in objects if o.class_id == CONTAINER_CLASS_ID]
            cluster_of_item, commands = {}, []
            if items and containers:
                cluster_ids = service.trigger.group(items, len(containers), True, size_weight=ws, height_weight=wh,
                                                    group_distance=gd, colour_weight=wc)
                cluster_of_item = {o.object_id: int(c) for o, c in zip(items, cluster_ids, strict=True)}
                commands = planner.plan(items, containers, cluster_ids)
            result = {"mode": "calibrated", "objects": [object_record(o, cluster_of_item.get(o.object_id), by_id) for o in objects],
                      "commands": [command_record(c) for c in commands]}
            scores.append(evaluation.score_session(gt, result))
        agg = evaluation.aggregate(scores)
        rows.append({"size_weight": ws, "height_weight": wh, "group_distance": gd, "colour_weight": wc,
                     "share_sorted_correctly": agg.share_sorted_correctly, "mean_ari": agg.mean_ari})
    return rows


def _plateau_best(rows: list[dict], size_weights: list[float], height_weights: list[float],
                  group_distances: list[float | None] | None = None, colour_weights: list[float] | None = None) -> dict:
    """The row with the best ``mean_sorted`` (ties within 1e-9); among ties, the one whose
    neighbours on the grid (one step either way on each axis: size weight, height weight,
    group distance and colour weight) score best on average, so the choice sits inside a
    plateau rather than on its edge."""
    top = max(r["mean_sorted"] for r in rows)
    distances = group_distances or [None]
    colours = colour_weights or [0.0]

    def position(row: dict) -> np.ndarray:
        gd = row["group_distance"]
        wc = row.get("colour_weight", 0.0)
        return np.array([size_weights.index(row["size_weight"]), height_weights.index(row["height_weight"]),
                         distances.index(gd) if gd in distances else 0, colours.index(wc) if wc in colours else 0])

    def neighbourhood(row: dict) -> float:
        here = position(row)
        return float(np.mean([r["mean_sorted"] for r in rows if np.abs(position(r) - here).max() <= 1]))

    return max((r for r in rows if r["mean_sorted"] >= top - 1e-9), key=neighbourhood)


@click.command("tune-grouping")
@click.option("--n", "n_sessions", default=30, show_default=True, type=int, help="Tuning sessions per kind set.")
@click.option("--kinds", "kind_sets", multiple=True, type=click.Choice(["heldout", "known"]), default=("heldout", "known"),
              show_default=True, help="Which kinds to tune on (repeatable); seeds from TUNING_SEED_START.")
@click.option("--size-weights", default="0,0.5,1,1.5,2,3", show_default=True, help="Comma list.")
@click.option("--height-weights", default="0,0.25,0.5,1", show_default=True, help="Comma list.")
@click.option("--group-distances", default=None, help="Comma list (default: Settings.grouping_distance, else the embedder's calibrated distance).")
@click.option("--colour-weights", default=None, help="Comma list (default: Settings.grouping_colour_weight).")
@click.option("--cache", default=str(DEFAULT_CACHE), show_default=True, type=click.Path(path_type=Path))
@click.option("--detector", "detector_kind", type=click.Choice(["model", "ground-truth"]), default="model", show_default=True)
@click.option("--json-out", default=Path("out/bench/tune_grouping.json"), show_default=True, type=click.Path(path_type=Path))
@click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Keep the database and frames here (as evaluate-sessions --data-dir): sessions stored "
                   "already are not ingested again. After changing the embedder's weights, run "
                   "`sorterbot-cloud db reembed --arm-id TUNE` with DATA_DIR set to this folder first.")
def tune_grouping(n_sessions: int, kind_sets: tuple[str, ...], size_weights: str, height_weights: str, group_distances: str | None,
                  cache: Path, detector_kind: str, json_out: Path, threads: int | None, data_dir: Path | None = None,
                  colour_weights: str | None = None) -> None:
    """Choose the grouping's weights and distance (Settings.grouping_size_weight, grouping_height_weight, grouping_distance, grouping_colour_weight).

    Simulated sessions with tuning seeds (never the seeds of evaluate-sessions' figures)
    are ingested once; the calibrated grouping is then replayed for every combination of
    weights and group distances, and the share of sessions sorted correctly is printed
    per kind set and on average. Pick a row, set the settings (config.yaml: grouping_size_weight,
    grouping_height_weight, grouping_distance, grouping_colour_weight).
    """
    _set_threads(threads)
    ws_grid, wh_grid = _floats(size_weights), _floats(height_weights)
    wc_grid = _floats(colour_weights) if colour_weights else None
    if not ws_grid or not wh_grid or wc_grid == [] or any(v < 0 for v in ws_grid + wh_grid + (wc_grid or [])):
        raise click.BadParameter("weights must be non-empty lists of numbers >= 0")
    detector = GroundTruthDetector() if detector_kind == "ground-truth" else None
    arm_id = "TUNE" if detector_kind == "model" else "TUNE_GT"  # one database may keep both kinds of detections
    table: dict[str, list[dict]] = {}
    seeds_used: dict[str, list[int]] = {}
    with bench_context(data_dir=data_dir, detector=detector) as ctx:
        gd_grid = _floats(group_distances) if group_distances else [ctx.service.trigger.kinds_distance(shapes_appended=True)]
        wc_grid = wc_grid or [ctx.service.settings.grouping_colour_weight]
        for kinds in kind_sets:
            heldout = kinds == "heldout"
            sessions, seed = [], TUNING_SEED_START[kinds] - 1
            while len(sessions) < n_sessions:
                seed += 1
                try:
                    folder = simulated_session(cache, seed, heldout=heldout, **session_spec(seed))
                except BadRequest:  # the simulator could not lay out this scene
                    continue
                click.echo(f"{kinds} session {len(sessions) + 1}/{n_sessions} seed {seed}", err=True)
                gt = json.loads((folder / "ground_truth.json").read_text())
                session_id = f"tune_{kinds}_{seed}"
                if stored_frame_count(ctx.service, arm_id, session_id) != len(_frames(folder)):
                    ingest_session(ctx.service, folder, arm_id, session_id)
                sessions.append((gt, ctx.service.repository.load_session(arm_id, session_id), ctx.service.trigger.frame_views(arm_id, session_id)))
                seeds_used.setdefault(kinds, []).append(seed)
            table[kinds] = tune_grouping_scores(ctx.service, sessions, ws_grid, wh_grid, gd_grid, wc_grid)
    header = f"{'size w':>6} {'height w':>8} {'distance':>8} {'colour w':>8} " + " ".join(f"{k + ' sorted':>15}" for k in kind_sets) + f" {'mean':>6}"
    click.echo(header)
    combined = []
    for i, row in enumerate(table[kind_sets[0]]):
        shares = [table[k][i]["share_sorted_correctly"] for k in kind_sets]
        mean = float(np.mean(shares))
        combined.append({**{k: row[k] for k in ("size_weight", "height_weight", "group_distance", "colour_weight")},
                         **{f"{k}_sorted": table[k][i]["share_sorted_correctly"] for k in kind_sets},
                         **{f"{k}_mean_ari": table[k][i]["mean_ari"] for k in kind_sets}, "mean_sorted": mean})
        gd = row["group_distance"]
        click.echo(f"{row['size_weight']:>6g} {row['height_weight']:>8g} {'gap' if gd is None else f'{gd:g}':>8} {row['colour_weight']:>8g} "
                   + " ".join(f"{v:>15.3f}" for v in shares) + f" {mean:>6.3f}")
    best = _plateau_best(combined, ws_grid, wh_grid, gd_grid, wc_grid)
    gd = best["group_distance"]
    click.echo(f"best mean share sorted: size weight {best['size_weight']:g}, height weight {best['height_weight']:g}, "
               f"distance {'gap' if gd is None else f'{gd:g}'}, colour weight {best['colour_weight']:g} ({best['mean_sorted']:.3f}); "
               "ties go to the row whose grid neighbours score best")
    _write_json(json_out, {"n_sessions": n_sessions, "detector": detector_kind, "seeds": seeds_used,
                           "rows": combined, "best": best})
