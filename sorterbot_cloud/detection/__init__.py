"""Detection of items and containers on arm camera frames.

Public API: the :class:`Detector` protocol, :func:`load_detector` (the default
torchvision Faster R-CNN from ``settings.detector_weights``), and, imported lazily so
that importing :mod:`sorterbot_cloud.detection` stays light, :class:`TorchvisionDetector` and the optional
Detectron2 backend (:mod:`sorterbot_cloud.detection.detectron2_backend`).
"""

from __future__ import annotations

from .base import CLASS_NAMES, Detector, check_image

__all__ = ["CLASS_NAMES", "Detector", "check_image", "load_detector"]


def load_detector(settings, device: str = "cpu") -> Detector:
    """Build the configured detector.

    Parameters
    ----------
    settings : sorterbot_cloud.config.Settings
        Uses ``detector_weights`` (a ``.pt`` file of :class:`~sorterbot_cloud.detection.torchvision_detector.TorchvisionDetector`,
        or a Detectron2 ``.pth``/``.pkl`` with a ``.yaml`` config beside it for the optional
        Detectron2 backend), ``detector_score_threshold``, ``detector_nms_iou`` and
        ``detector_min_size_px``; with ``inference_runtime`` ``onnxruntime`` the exported
        graph of the torchvision detector (:class:`~sorterbot_cloud.detection.onnx_detector.OnnxDetector`).
    device : str

    Returns
    -------
    Detector

    Raises
    ------
    FileNotFoundError
        If the weights file does not exist.
    ImportError
        If a Detectron2 model is configured but Detectron2 is not installed.
    ValueError
        If ``inference_runtime`` is ``onnxruntime`` and the weights are a Detectron2 model.
    """
    from pathlib import Path

    if getattr(settings, "inference_runtime", "torch") == "onnxruntime":
        from .onnx_detector import OnnxDetector

        return OnnxDetector.from_settings(settings)
    weights = Path(settings.detector_weights)
    if weights.suffix in (".pth", ".pkl"):
        from .detectron2_backend import Detectron2Detector

        return Detectron2Detector.from_settings(settings, device=device)
    from .torchvision_detector import TorchvisionDetector

    return TorchvisionDetector.from_settings(settings, device=device)
