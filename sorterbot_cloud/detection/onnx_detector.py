"""The detector exported to ONNX and run by ONNX Runtime.

:func:`export_detector` writes the whole inference forward of a
:class:`~sorterbot_cloud.detection.torchvision_detector.TorchvisionDetector` as one ONNX graph with torch's
TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset
:data:`sorterbot_cloud.onnx_runtime.OPSET`): the model's own transform (normalisation by
its mean and standard deviation, resize to the operating point's short side, padding to
a multiple of 32), backbone and FPN, RPN (anchors, top-k, NMS), RoIAlign box head with its
score threshold and per-class NMS, and, when the weights carry one and
``box_refine_steps`` is 1, the refine head's second regression of the final boxes
(:func:`sorterbot_cloud.detection.refine_head.refine_boxes`). Only the area-averaging shrink of the frame
(:meth:`TorchvisionDetector._shrink`, OpenCV) and the scaling of the boxes back to the
frame's pixels stay outside the graph, in :class:`OnnxDetector`, exactly as in the eager
detector. The image height and width are dynamic.

:class:`OnnxDetector` has the :class:`~sorterbot_cloud.detection.base.Detector` interface and needs numpy,
OpenCV and onnxruntime only: importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from sorterbot_cloud import onnx_runtime
from sorterbot_cloud.structures import Detections

from .base import check_image

log = logging.getLogger(__name__)

#: Name of the graph's input: (H, W, 3) uint8 RGB frame, already shrunk to the model's input scale.
INPUT_NAME = "image"
#: Names of the graph's outputs: boxes (N, 4) float32 XYXY in the input's pixels, model
#: labels (N,) int64 (``class_id + 1``), scores (N,) float32.
OUTPUT_NAMES = ("boxes", "labels", "scores")


def detector_operating_point(settings) -> dict:
    """Settings baked into a detector graph (those :meth:`TorchvisionDetector.from_settings` applies).

    The long-side limit follows from ``detector_min_size_px`` and the weights' own
    configuration, so it is not part of the key.
    """
    return {
        "score_threshold": float(settings.detector_score_threshold),
        "nms_iou": float(settings.detector_nms_iou),
        "min_size_px": int(settings.detector_min_size_px),
        "box_refine_steps": int(settings.detector_box_refine_steps),
    }


@contextlib.contextmanager
def _gather_merge_of_levels():
    """Export torchvision's multi-level RoIAlign merge as one gather instead of a scatter per level.

    While tracing, ``MultiScaleRoIAlign`` pools each pyramid level's boxes separately and
    merges the results with one ``ScatterElements`` per level into a zero tensor
    (``torchvision.ops.poolers._onnx_merge_levels``), 16 ms of a 190 ms frame in ONNX
    Runtime. The same rows in the same order come from concatenating the levels' results and
    gathering them by the inverse of the concatenation order.
    """
    import torch
    from torchvision.ops import poolers

    def merge(levels: torch.Tensor, unmerged_results: list[torch.Tensor]) -> torch.Tensor:
        order = torch.cat([torch.where(levels == level)[0] for level in range(len(unmerged_results))])
        return torch.cat(unmerged_results)[torch.argsort(order)]

    original = poolers._onnx_merge_levels
    poolers._onnx_merge_levels = merge
    try:
        yield
    finally:
        poolers._onnx_merge_levels = original


def _graph_module(detector):
    """The inference forward of a loaded (unfused) detector as a module of one image."""
    import torch
    from torchvision.ops import boxes as box_ops

    model, refine = detector.model.eval(), detector.config.box_refine_steps == 1

    class _Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor):
            m = self.model
            x = image.permute(2, 0, 1).float() / 255.0
            original_sizes = [(x.shape[-2], x.shape[-1])]
            images, _ = m.transform([x])
            features = m.backbone(images.tensors)
            proposals, _ = m.rpn(images, features)
            detections, _ = m.roi_heads(features, proposals, images.image_sizes)
            boxes, labels, scores = detections[0]["boxes"], detections[0]["labels"], detections[0]["scores"]
            if refine:  # sorterbot_cloud.detection.refine_head.refine_boxes for one image, without Python-side lengths
                heads = m.roi_heads
                pooled = heads.box_roi_pool(features, [boxes], images.image_sizes)
                head = getattr(m, "refine_head", None)
                if head is not None:
                    regression, coder = head(pooled), head.box_coder
                else:
                    _, regression = heads.box_predictor(heads.box_head(pooled))
                    coder = heads.box_coder
                decoded = coder.decode(regression, [boxes]).reshape(-1, regression.shape[1] // 4, 4)
                picked = decoded.gather(1, labels.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)
                boxes = box_ops.clip_boxes_to_image(picked, images.image_sizes[0])
            out = m.transform.postprocess([{"boxes": boxes, "labels": labels, "scores": scores}],
                                          images.image_sizes, original_sizes)[0]
            return out["boxes"], out["labels"], out["scores"]

    return _Graph().eval()


def export_detector(weights: str | Path, out_path: str | Path, settings) -> Path:
    """Export a detector weights file at ``settings``' operating point to an ONNX graph plus its sidecar.

    Parameters
    ----------
    weights : path
        A :class:`~sorterbot_cloud.detection.torchvision_detector.TorchvisionDetector` file (``.pt``).
    out_path : path
        ``.onnx`` file to write; the sidecar goes to ``<out_path>.json``.
    settings : sorterbot_cloud.config.Settings
        ``detector_score_threshold``, ``detector_nms_iou``, ``detector_min_size_px`` and
        ``detector_box_refine_steps`` are baked into the graph
        (:func:`detector_operating_point`), as :meth:`TorchvisionDetector.from_settings` applies them.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    FileNotFoundError
        If ``weights`` does not exist.
    ValueError
        If it is not a detector file, or is a Detectron2 model (not exported).
    """
    from .torchvision_detector import TorchvisionDetector

    weights = Path(weights)
    if weights.suffix in (".pth", ".pkl"):
        raise ValueError(f"{weights}: only the torchvision detector (.pt) is exported to ONNX, not Detectron2 models")
    config = TorchvisionDetector.from_settings(dataclasses.replace(settings, detector_weights=weights)).config
    # the same operating point on the unfused model: ONNX Runtime folds BatchNorm itself
    detector = TorchvisionDetector.load(weights, score_threshold=config.score_threshold, nms_iou=config.nms_iou,
                                        min_size_px=config.min_size_px, max_size_px=config.max_size_px,
                                        box_refine_steps=config.box_refine_steps)
    return export_loaded_detector(detector, weights, out_path, detector_operating_point(settings))


def export_loaded_detector(detector, weights: str | Path, out_path: str | Path, operating_point: dict) -> Path:
    """Export a loaded :class:`~sorterbot_cloud.detection.torchvision_detector.TorchvisionDetector` at its own configuration.

    Parameters
    ----------
    detector : TorchvisionDetector
        Not fused (:meth:`~sorterbot_cloud.detection.torchvision_detector.TorchvisionDetector.fuse`); its
        config's threshold, NMS IoU, input sizes and ``box_refine_steps`` are baked in.
    weights : path
        The file it was loaded from (its SHA-256 goes to the sidecar).
    out_path : path
    operating_point : dict
        Stored in the sidecar as the key that :func:`sorterbot_cloud.onnx_runtime.find_graph` compares.

    Returns
    -------
    Path
        ``out_path``.
    """
    import torch

    weights, out_path, config = Path(weights), Path(out_path), detector.config
    # an example frame at the model's input scale (the graph's height and width are dynamic)
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (config.min_size_px, int(config.min_size_px * 4 / 3), 3), dtype=torch.uint8,
                            generator=generator)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), _gather_merge_of_levels(), warnings.catch_warnings():
        # the tracer's notes on Python values it records as constants (image sizes of the example)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(_graph_module(detector), (example,), str(out_path), dynamo=False,
                          opset_version=onnx_runtime.OPSET, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={INPUT_NAME: {0: "height", 1: "width"}, **{n: {0: "detections"} for n in OUTPUT_NAMES}})
    onnx_runtime.write_sidecar(
        out_path, model="detector", source_weights=weights,
        inputs={INPUT_NAME: {"shape": ["height", "width", 3], "dtype": "uint8", "layout": "HWC RGB",
                             "frame_shrink": "cv2.INTER_AREA to the model's input scale, outside the graph",
                             "min_size_px": config.min_size_px, "max_size_px": config.max_size_px,
                             "pad_multiple_px": 32}},
        operating_point=operating_point,
        extra={"class_names": list(config.class_names), "detector_config": config.to_dict(),
               "refine_head_in_graph": bool(config.box_refine_steps == 1 and config.refine_head)},
    )
    return out_path


class OnnxDetector:
    """An exported detector graph behind the :class:`~sorterbot_cloud.detection.base.Detector` interface.

    Parameters
    ----------
    graph_path : path
        A graph written by :func:`export_detector`, with its sidecar.
    threads : int, optional
        ONNX Runtime intra-op threads (:func:`sorterbot_cloud.onnx_runtime.make_session`).

    Raises
    ------
    FileNotFoundError
        If the graph or its sidecar is missing.
    ValueError
        If the sidecar is not a detector graph's.
    """

    def __init__(self, graph_path: str | Path, *, threads: int | None = None) -> None:
        self.graph_path = Path(graph_path)
        self.sidecar = onnx_runtime.read_sidecar(self.graph_path)
        if self.sidecar.get("model") != "detector":
            raise ValueError(f"{self.graph_path} is a {self.sidecar.get('model')!r} graph, not a detector")
        inputs = self.sidecar["inputs"][INPUT_NAME]
        self.min_size_px = int(inputs["min_size_px"])
        self.max_size_px = int(inputs["max_size_px"])
        self.class_names = tuple(self.sidecar["class_names"])
        self.operating_point = dict(self.sidecar["operating_point"])
        self.session = onnx_runtime.make_session(self.graph_path, threads)

    @classmethod
    def from_settings(cls, settings, cache_dir: str | Path | None = None) -> "OnnxDetector":
        """The graph of ``settings.detector_weights`` at the settings' operating point, found or
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
        ValueError
            If the weights are a Detectron2 model.
        """
        weights = Path(settings.detector_weights)
        if weights.suffix in (".pth", ".pkl"):
            raise ValueError(f"{weights}: inference_runtime onnxruntime runs the torchvision detector (.pt) only")
        cache_dir = Path(settings.data_dir) / "onnx" if cache_dir is None else Path(cache_dir)
        graph = onnx_runtime.find_graph(weights, detector_operating_point(settings), cache_dir,
                                        lambda out: export_detector(weights, out, settings))
        return cls(graph, threads=settings.torch_threads)

    def _shrink(self, image: np.ndarray) -> np.ndarray:
        """Area-average a frame down to the model's input size (as :meth:`TorchvisionDetector._shrink`)."""
        h, w = image.shape[:2]
        scale = min(self.min_size_px / min(h, w), self.max_size_px / max(h, w))
        if scale >= 1.0:
            return image
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect on several RGB images (one graph run each).

        Parameters
        ----------
        images : sequence of ndarray of shape (H_i, W_i, 3), uint8, RGB

        Returns
        -------
        list of Detections
            Boxes in the pixels of each original image, scores >= the graph's score threshold.

        Raises
        ------
        InvalidImage
            If an image is not an (H, W, 3) uint8 array.
        """
        checked = [check_image(img, f"images[{i}]") for i, img in enumerate(images)]
        results = []
        for img in checked:
            small = np.ascontiguousarray(self._shrink(img))
            boxes, labels, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: small})
            boxes = boxes.astype(np.float32, copy=False).reshape(-1, 4)
            h, w = img.shape[:2]
            boxes *= np.float32([w / small.shape[1], h / small.shape[0]] * 2)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            results.append(Detections(boxes, scores.astype(np.float32).clip(0, 1), labels.astype(np.int64) - 1))
        return results

    def detect(self, image: np.ndarray) -> Detections:
        """Detect on one RGB image; see :meth:`detect_batch`."""
        return self.detect_batch([image])[0]
