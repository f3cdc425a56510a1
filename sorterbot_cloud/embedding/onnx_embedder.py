"""The item embedder exported to ONNX and run by ONNX Runtime.

:func:`export_embedder` writes a ResNet18 weights file (:mod:`sorterbot_cloud.embedding.embedder`) as an
ONNX graph whose input is the letterboxed uint8 batch and whose output is the
penultimate-layer feature before L2 normalisation; the normalisation by the sidecar's
mean and standard deviation and the centre focus weight (:func:`sorterbot_cloud.embedding.embedder.focus_mask`)
are inside the graph. :class:`OnnxEmbedder` has the interface of
:class:`sorterbot_cloud.embedding.embedder.Embedder` (``embed(crops) -> (N, 512)``) and needs numpy,
OpenCV and onnxruntime only: importing this module does not import torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from sorterbot_cloud import onnx_runtime
from sorterbot_cloud.config import PROJECT_ROOT
from sorterbot_cloud.errors import BadRequest

from .crops import letterbox_batch

log = logging.getLogger(__name__)

#: The shipped weights and torchvision's ImageNet file name (:mod:`sorterbot_cloud.embedding.embedder`).
SHIPPED_WEIGHTS = PROJECT_ROOT / "weights" / "embedder.pt"
IMAGENET_RESNET18_FILE = "resnet18-f37072fd.pth"
#: Width of an embedding (:data:`sorterbot_cloud.embedding.embedder.EMBEDDING_DIM`).
EMBEDDING_DIM = 512
#: Name of the graph's input: (B, 3, S, S) uint8, RGB, letterboxed crops.
INPUT_NAME = "crops"
#: Name of the graph's output: (B, 512) float32 features before L2 normalisation.
OUTPUT_NAME = "features"
#: The eight symmetries of the square as (transpose, flip_h, flip_v), in the order of
#: :attr:`sorterbot_cloud.embedding.embedder.Embedder.VIEWS`.
VIEWS = ((False, False, False), (False, True, False), (False, False, True), (False, True, True),
         (True, True, False), (True, False, True), (True, False, False), (True, True, True))


def _preprocessing(embedder) -> dict:
    return {
        "input_size_px": embedder.input_size_px,
        "mean": list(embedder.mean),
        "std": list(embedder.std),
        "focus_radii": None if embedder.focus_radii is None else list(embedder.focus_radii),
        "test_time_views": embedder.test_time_views,
    }


def export_embedder(weights: str | Path, out_path: str | Path, *, source: str = "configured") -> Path:
    """Export an embedder weights file to an ONNX graph plus its sidecar.

    Parameters
    ----------
    weights : path
        A ResNet18 weights file read by :meth:`sorterbot_cloud.embedding.embedder.Embedder.from_weights`
        (its ``.json`` sidecar gives the preprocessing).
    out_path : path
        ``.onnx`` file to write; the sidecar goes to ``<out_path>.json``
        (:func:`sorterbot_cloud.onnx_runtime.write_sidecar`).
    source : str
        Where the weights came from (``configured``, ``torch-cache``, ``shipped``), kept in the sidecar.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    FileNotFoundError
        If ``weights`` does not exist.
    ValueError
        If it is not a ResNet18 ``state_dict``.
    """
    import torch

    from .embedder import Embedder

    weights, out_path = Path(weights), Path(out_path)
    eager = Embedder.from_weights(weights, source=source)

    class _Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = eager.model.to(memory_format=torch.contiguous_format)
            self.register_buffer("mean", eager._mean.clone())
            self.register_buffer("std", eager._std.clone())
            focus = eager._focus if eager._focus is not None else torch.ones(1, 1, 1, 1)
            self.register_buffer("focus", focus.clone())

        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            return self.model((crops.float() - self.mean) / self.std * self.focus)

    graph = _Graph().eval()
    size = eager.input_size_px
    example = torch.zeros((2, 3, size, size), dtype=torch.uint8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(graph, (example,), str(out_path), dynamo=False, opset_version=onnx_runtime.OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnx_runtime.write_sidecar(
        out_path, model="embedder", source_weights=weights,
        inputs={INPUT_NAME: {"shape": ["batch", 3, size, size], "dtype": "uint8", "layout": "NCHW RGB letterboxed"}},
        operating_point=embedder_operating_point(),
        extra={"preprocessing": _preprocessing(eager), "group_cosine_distance": eager.group_distance,
               "weights_source": eager.source, "embedding_dim": EMBEDDING_DIM},
    )
    return out_path


def embedder_operating_point() -> dict:
    """Settings baked into an embedder graph: none (the preprocessing comes from the weights' sidecar)."""
    return {}


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, else
    ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub`` (torch's own rule)."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub"


def resolve_weights(configured: str | Path | None, *, shipped: str | Path = SHIPPED_WEIGHTS) -> tuple[Path, str]:
    """The embedder weights the eager service would pick (:func:`sorterbot_cloud.embedding.embedder.resolve_weights`,
    same order: configured, shipped, torchvision's ImageNet file in the torch cache), without importing torch.

    Returns
    -------
    (path, source)
        ``source`` is ``configured``, ``shipped`` or ``torch-cache``.

    Raises
    ------
    FileNotFoundError
        If a configured path does not exist, or no weights file is found at all.
    """
    shipped = Path(shipped)
    if configured is not None and Path(configured).resolve() != shipped.resolve():
        if not Path(configured).is_file():
            raise FileNotFoundError(f"configured embedder weights {configured} do not exist")
        return Path(configured), "configured"
    if shipped.is_file():
        return shipped, "shipped"
    imagenet = torch_hub_dir() / "checkpoints" / IMAGENET_RESNET18_FILE
    if imagenet.is_file():
        return imagenet, "torch-cache"
    raise FileNotFoundError(f"no embedder weights: none configured, no {shipped}, no {imagenet}")


class OnnxEmbedder:
    """Batched item embedder on an exported graph (interface of :class:`sorterbot_cloud.embedding.embedder.Embedder`).

    Parameters
    ----------
    graph_path : path
        A graph written by :func:`export_embedder`, with its sidecar.
    threads : int, optional
        ONNX Runtime intra-op threads (:func:`sorterbot_cloud.onnx_runtime.make_session`).
    batch_size : int
        Crops per run.

    Raises
    ------
    FileNotFoundError
        If the graph or its sidecar is missing.
    ValueError
        If the sidecar is not an embedder graph's.
    """

    def __init__(self, graph_path: str | Path, *, threads: int | None = None, batch_size: int = 64) -> None:
        self.graph_path = Path(graph_path)
        self.sidecar = onnx_runtime.read_sidecar(self.graph_path)
        if self.sidecar.get("model") != "embedder":
            raise ValueError(f"{self.graph_path} is a {self.sidecar.get('model')!r} graph, not an embedder")
        pre = self.sidecar["preprocessing"]
        self.input_size_px = int(pre["input_size_px"])
        self.mean = tuple(pre["mean"])
        self.std = tuple(pre["std"])
        self.focus_radii = None if pre["focus_radii"] is None else tuple(pre["focus_radii"])
        self.test_time_views = int(pre["test_time_views"])
        if self.test_time_views not in (1, 2, 4, 8):
            raise ValueError(f"test_time_views must be 1, 2, 4 or 8, got {self.test_time_views}")
        self.batch_size = int(batch_size)
        #: Cosine distance that separates kinds for these weights (as ``Embedder.group_distance``).
        self.group_distance = self.sidecar.get("group_cosine_distance")
        self.source = f"onnxruntime:{self.sidecar.get('weights_source', self.sidecar['source_weights'])}"
        self.session = onnx_runtime.make_session(self.graph_path, threads)

    @classmethod
    def from_settings(cls, settings, cache_dir: str | Path | None = None) -> "OnnxEmbedder":
        """The graph of the weights ``settings`` asks for (:func:`resolve_weights`), found or
        exported by :func:`sorterbot_cloud.onnx_runtime.find_graph`.

        Parameters
        ----------
        settings : sorterbot_cloud.config.Settings
        cache_dir : path, optional
            Where graphs are exported when none matches; default ``<settings.data_dir>/onnx``.

        Raises
        ------
        FileNotFoundError
            If the weights are missing, or no graph matches and torch is not installed.
        """
        weights, source = resolve_weights(settings.embedder_weights)
        cache_dir = Path(settings.data_dir) / "onnx" if cache_dir is None else Path(cache_dir)
        graph = onnx_runtime.find_graph(weights, embedder_operating_point(), cache_dir,
                                        lambda out: export_embedder(weights, out, source=source))
        log.info("embedder graph: %s (%s)", graph, source)
        return cls(graph, threads=settings.torch_threads)

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Letterbox crops to ``S x S`` and stack them.

        Returns
        -------
        ndarray of shape (N, 3, S, S), uint8

        Raises
        ------
        InvalidImage
            If a crop is not an (h, w, 3) uint8 array.
        """
        return letterbox_batch(crops, self.input_size_px)

    def forward_uint8(self, batch: np.ndarray) -> np.ndarray:
        """L2-normalised features (B, 512) of a uint8 batch (B, 3, S, S), views averaged first.

        The views are taken of the uint8 input; the focus weight is symmetric under the
        square's symmetries, so this equals taking them after normalisation (the eager order).
        """
        views = []
        for transpose, flip_h, flip_v in VIEWS[: self.test_time_views]:
            v = batch.transpose(0, 1, 3, 2) if transpose else batch
            if flip_h:
                v = v[:, :, :, ::-1]
            if flip_v:
                v = v[:, :, ::-1, :]
            views.append(v)
        stacked = np.ascontiguousarray(np.concatenate(views) if len(views) > 1 else views[0])
        feats = self.session.run([OUTPUT_NAME], {INPUT_NAME: stacked})[0]
        feats = feats.reshape(self.test_time_views, batch.shape[0], -1).mean(0)
        norms = np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)  # torch's F.normalize eps
        return (feats / norms).astype(np.float32)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed item crops.

        Parameters
        ----------
        crops : sequence of ndarray of shape (h_i, w_i, 3), uint8, RGB

        Returns
        -------
        embeddings : ndarray of shape (N, 512), float32
            L2-normalised.

        Raises
        ------
        BadRequest
            If ``crops`` is a single array rather than a sequence of crops.
        InvalidImage
            If a crop is not an (h, w, 3) uint8 array.
        """
        if isinstance(crops, np.ndarray) and crops.ndim == 3:
            raise BadRequest("crops must be a sequence of (h, w, 3) arrays, got a single array")
        crops = list(crops)
        out = np.zeros((len(crops), EMBEDDING_DIM), np.float32)
        for start in range(0, len(crops), self.batch_size):
            batch = self.preprocess(crops[start : start + self.batch_size])
            out[start : start + len(batch)] = self.forward_uint8(batch)
        return out

    def __repr__(self) -> str:
        return f"OnnxEmbedder({json.dumps(str(self.graph_path))}, input_size_px={self.input_size_px})"
