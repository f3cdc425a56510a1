"""``sorterbot-cloud detector export`` and ``sorterbot-cloud embedder export``: ONNX graphs of the models.

Each writes ``<weights stem>.onnx`` next to the weights (or ``--out``) with a JSON sidecar
``<stem>.onnx.json`` (:mod:`sorterbot_cloud.onnx_runtime`); the service runs them when
``inference_runtime`` is ``onnxruntime``. The detector graph bakes in the settings'
operating point (``detector_score_threshold``, ``detector_nms_iou``,
``detector_min_size_px``, ``detector_box_refine_steps``; config file and environment as
for ``serve``).
"""

from __future__ import annotations

from pathlib import Path

import click


def _settings():
    from sorterbot_cloud.config import Settings

    return Settings.load()


def _report(path: Path) -> None:
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and {path.name}.json")


def _export_embedder(weights: Path | None, out: Path | None) -> Path:
    from sorterbot_cloud.embedding.embedder import resolve_weights
    from sorterbot_cloud.embedding.onnx_embedder import export_embedder

    settings = _settings()
    if weights is None:
        choice = resolve_weights(settings.embedder_weights)
        weights, source = choice.path, choice.source
    else:
        source = "configured"
    return export_embedder(weights, out or Path(weights).with_suffix(".onnx"), source=source)


@click.group("detector")
def detector() -> None:
    """The detector's exported (ONNX) graph."""


@detector.command("export")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Detector weights (default: the detector_weights setting).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Graph file (default: next to the weights, .onnx).")
@click.option("--with-embedder/--no-embedder", default=True, show_default=True,
              help="Also export the embedder's weights (as `embedder export` does).")
def detector_export(weights: Path | None, out: Path | None, with_embedder: bool) -> None:
    """Export the detector (and the embedder) to ONNX at the settings' operating point."""
    from sorterbot_cloud.detection.onnx_detector import export_detector

    settings = _settings()
    weights = weights or settings.detector_weights
    try:
        _report(export_detector(weights, out or Path(weights).with_suffix(".onnx"), settings))
        if with_embedder:
            _report(_export_embedder(None, None))
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("embedder")
def embedder() -> None:
    """The embedder's exported (ONNX) graph."""


@embedder.command("export")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Embedder weights (default: those the service picks, sorterbot_cloud.embedding.embedder.resolve_weights).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Graph file (default: next to the weights, .onnx).")
def embedder_export(weights: Path | None, out: Path | None) -> None:
    """Export the embedder to ONNX."""
    try:
        _report(_export_embedder(weights, out))
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
