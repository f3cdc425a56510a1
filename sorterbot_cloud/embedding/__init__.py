"""Vectorizer: item crops -> embeddings (ResNet18) -> groups (K-Means).

Public API
----------
crop_items(image, boxes_xyxy, margin=0.1) -> list of crops
Embedder.embed(crops) -> embeddings (N, 512) float32, L2-normalised
load_embedder(settings) -> Embedder
cluster_embeddings(embeddings, n_clusters, random_state=0, n_init=10) -> cluster_ids (N,) int64

Torch is imported only when the embedder is first used, so importing this package (for
example for ``cluster_embeddings``) stays light.
"""

from __future__ import annotations

from .clustering import canonical_labels, cluster_embeddings
from .crops import crop_items, letterbox

__all__ = ["Embedder", "canonical_labels", "cluster_embeddings", "crop_items", "letterbox", "load_embedder"]


def load_embedder(settings):
    """Return the :class:`~sorterbot_cloud.embedding.embedder.Embedder` that ``settings`` asks for.

    Weights order: a configured ``settings.embedder_weights``; torchvision's ImageNet
    ResNet18 in the torch cache; the shipped ``weights/embedder.pt`` (see
    :mod:`sorterbot_cloud.embedding.embedder`). The choice is logged. With ``settings.inference_runtime``
    ``onnxruntime``: the exported graph of those weights
    (:class:`~sorterbot_cloud.embedding.onnx_embedder.OnnxEmbedder`).

    Raises
    ------
    FileNotFoundError
        If a configured weights file is missing, or no weights are found at all.
    """
    if getattr(settings, "inference_runtime", "torch") == "onnxruntime":
        from .onnx_embedder import OnnxEmbedder

        return OnnxEmbedder.from_settings(settings)
    from .embedder import load_embedder as _load

    return _load(settings)


def __getattr__(name):
    if name == "Embedder":
        from .embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'sorterbot_cloud.embedding' has no attribute {name!r}")
