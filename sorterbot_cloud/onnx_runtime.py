"""Exported (ONNX) models run by ONNX Runtime: files, sidecars and sessions.

The detector and the embedder can be exported from their PyTorch weights files to ONNX
graphs (:func:`sorterbot_cloud.detection.onnx_detector.export_detector`,
:func:`sorterbot_cloud.embedding.onnx_embedder.export_embedder`, ``sorterbot-cloud detector export``) and
run by ONNX Runtime (:class:`sorterbot_cloud.detection.onnx_detector.OnnxDetector`,
:class:`sorterbot_cloud.embedding.onnx_embedder.OnnxEmbedder`) when ``Settings.inference_runtime`` is
``onnxruntime``. Every graph ``<stem>.onnx`` has a JSON sidecar ``<stem>.onnx.json``
with the source weights file and its SHA-256, the opset, the input sizes, the operating
point baked into the graph and the library versions that wrote it.

Where the service looks for a graph (:func:`find_graph`): next to the weights
(``weights/detector.onnx``, written by ``sorterbot-cloud detector export``), then in the
cache ``<data_dir>/onnx/``. A graph is used only when its sidecar names the same weights
bytes (SHA-256) and the same operating point; otherwise, when torch is installed, the
graph is exported into the cache on first load (a few seconds), and without torch a
:class:`FileNotFoundError` names the export command.

This module imports neither torch nor onnxruntime at import time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import uuid
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

#: ``format`` field of the sidecars written here.
SIDECAR_FORMAT = "sorterbot-onnx/1"
#: ONNX opset of the exported graphs (torch's TorchScript exporter, ``dynamo=False``).
OPSET = 17


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_of(graph_path: str | Path) -> Path:
    """The JSON sidecar of a graph: ``<name>.onnx.json``."""
    graph_path = Path(graph_path)
    return graph_path.with_name(graph_path.name + ".json")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that export and run graphs (those installed)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "onnx", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_sidecar(graph_path: str | Path, *, model: str, source_weights: str | Path, inputs: dict,
                  operating_point: dict, extra: dict | None = None) -> Path:
    """Write a graph's sidecar.

    Parameters
    ----------
    graph_path : path
        The ``.onnx`` file.
    model : {'detector', 'embedder'}
    source_weights : path
        The PyTorch weights file the graph was exported from.
    inputs : dict
        Input names -> description (shape, dtype, sizes).
    operating_point : dict
        Settings baked into the graph; :func:`find_graph` compares them.
    extra : dict, optional
        More fields (preprocessing, class names, source sidecar metadata).

    Returns
    -------
    Path
        The sidecar written.
    """
    data = {
        "format": SIDECAR_FORMAT,
        "model": model,
        "source_weights": str(source_weights),
        "source_sha256": sha256_file(source_weights),
        "opset": OPSET,
        "inputs": inputs,
        "operating_point": operating_point,
        "versions": library_versions(),
        **(extra or {}),
    }
    path = sidecar_of(graph_path)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read_sidecar(graph_path: str | Path) -> dict:
    """Read a graph's sidecar.

    Raises
    ------
    FileNotFoundError
        If the graph or its sidecar is missing.
    ValueError
        If the sidecar is not of :data:`SIDECAR_FORMAT`.
    """
    graph_path = Path(graph_path)
    if not graph_path.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {graph_path}")
    side = sidecar_of(graph_path)
    if not side.is_file():
        raise FileNotFoundError(f"ONNX graph {graph_path} has no sidecar {side}")
    data = json.loads(side.read_text())
    if data.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{side} is not a {SIDECAR_FORMAT} sidecar")
    return data


def graph_matches(graph_path: str | Path, weights_sha256: str, operating_point: dict) -> bool:
    """Whether a graph exists and was exported from these weights bytes at this operating point."""
    try:
        side = read_sidecar(graph_path)
    except (FileNotFoundError, ValueError, json.JSONDecodeError):
        return False
    return side.get("source_sha256") == weights_sha256 and side.get("operating_point") == operating_point


def find_graph(weights: str | Path, operating_point: dict, cache_dir: str | Path,
               export: Callable[[Path], Any]) -> Path:
    """The graph to run for ``weights`` at ``operating_point``, exported into the cache if needed.

    Looks at ``<weights stem>.onnx`` beside the weights, then in ``cache_dir``; a graph
    counts when :func:`graph_matches`. Otherwise ``export`` writes it under a temporary
    name in ``cache_dir`` and it is moved to ``cache_dir / <weights stem>.onnx``.

    Parameters
    ----------
    weights : path
        PyTorch weights file (it must exist: its SHA-256 identifies the graph).
    operating_point : dict
        JSON-ready settings baked into the graph.
    cache_dir : path
        Written only when no matching graph exists.
    export : callable
        ``export(graph_path)`` writes the graph and its sidecar (:func:`write_sidecar`);
        it needs torch.

    Returns
    -------
    Path

    Raises
    ------
    FileNotFoundError
        If the weights are missing, or no graph matches and torch is not installed.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"model weights not found: {weights}")
    sha = sha256_file(weights)
    name = weights.with_suffix(".onnx").name
    candidates = [weights.with_suffix(".onnx"), Path(cache_dir) / name]
    for graph in candidates:
        if graph_matches(graph, sha, operating_point):
            log.info("ONNX graph %s (weights %s)", graph, weights)
            return graph
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise FileNotFoundError(
            f"no ONNX graph of {weights} at this operating point ({operating_point}) in {candidates[0].parent} or "
            f"{cache_dir}, and torch is not installed to export one: run `sorterbot-cloud detector export` "
            "where torch is installed and ship the .onnx files with their sidecars"
        ) from exc
    target = Path(cache_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to ONNX at %s (no matching graph found)", weights, target)
    # written aside, then moved in place graph first and sidecar last: another process
    # (a second gunicorn worker) never reads a half-written graph as a matching one
    aside = target.with_name(f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.onnx")
    try:
        export(aside)
        os.replace(aside, target)
        os.replace(sidecar_of(aside), sidecar_of(target))
    finally:
        for leftover in (aside, sidecar_of(aside)):
            leftover.unlink(missing_ok=True)
    return target


def make_session(graph_path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU inference session with every graph optimisation on.

    Parameters
    ----------
    graph_path : path
    threads : int, optional
        Intra-op threads (``Settings.torch_threads``, ``TORCH_THREADS``, the same knob as
        the torch path); None keeps ONNX Runtime's default (one per physical core).
        Inter-op parallelism is off (one operator at a time).

    Returns
    -------
    onnxruntime.InferenceSession
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
