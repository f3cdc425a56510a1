"""Optional Detectron2 backend behind the :class:`~sorterbot_cloud.detection.base.Detector` interface.

For users who install Detectron2 themselves (it is not on the package registries
reachable here) and have a trained Detectron2 model, such as the original SorterBot
``faster_rcnn_R_50_FPN_3x`` fine-tune: a config ``.yaml`` and ``model_final.pth``.

Enable it by pointing ``detector_weights`` (config file or ``DETECTOR_WEIGHTS``) at the
``.pth`` file with the config beside it (same stem + ``.yaml``, or ``config.yaml`` in the
same folder); :func:`sorterbot_cloud.detection.load_detector` then builds :class:`Detectron2Detector`.
Detectron2 is imported only when that happens.

Detectron2's ``DefaultPredictor`` takes a BGR uint8 image (``cfg.INPUT.FORMAT``) and
returns ``{"instances": Instances}`` with ``pred_boxes`` (XYXY, pixels of the input),
``scores`` and ``pred_classes``; :func:`instances_to_detections` turns that into
:class:`~sorterbot_cloud.structures.Detections`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sorterbot_cloud.structures import CLASS_NAMES, Detections

from .base import check_image


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "tensor"):  # detectron2 Boxes
        value = value.tensor
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def instances_to_detections(instances, class_id_map: Mapping[int, int] | None = None,
                            score_threshold: float = 0.0) -> Detections:
    """Convert a Detectron2 ``Instances`` (or anything with the same fields) to :class:`Detections`.

    Parameters
    ----------
    instances : detectron2.structures.Instances
        With ``pred_boxes`` (``Boxes`` or (N, 4) XYXY pixels), ``scores`` (N,) and
        ``pred_classes`` (N,) (contiguous Detectron2 class indices).
    class_id_map : mapping, optional
        Detectron2 class index -> our ``class_id``; classes not in the map are dropped.
        Default: identity (index 0 ``item``, 1 ``container``).
    score_threshold : float
        Instances below this score are dropped.

    Returns
    -------
    Detections

    Raises
    ------
    ValueError
        If a mapped class id is not a known class, or the fields have inconsistent shapes.
    """
    boxes = _to_numpy(instances.pred_boxes).astype(np.float32).reshape(-1, 4)
    scores = _to_numpy(instances.scores).astype(np.float32).reshape(-1)
    classes = _to_numpy(instances.pred_classes).astype(np.int64).reshape(-1)
    if not (len(boxes) == len(scores) == len(classes)):
        raise ValueError(f"Instances fields disagree: {len(boxes)} boxes, {len(scores)} scores, {len(classes)} classes")
    mapping = dict(class_id_map) if class_id_map is not None else {i: i for i in range(len(CLASS_NAMES))}
    for target in mapping.values():
        if not 0 <= int(target) < len(CLASS_NAMES):
            raise ValueError(f"class_id_map targets must be in [0, {len(CLASS_NAMES)}), got {target}")
    keep = np.array([int(c) in mapping for c in classes], dtype=bool) & (scores >= score_threshold)
    mapped = np.array([mapping[int(c)] for c in classes[keep]], dtype=np.int64)
    return Detections(boxes[keep], np.clip(scores[keep], 0.0, 1.0), mapped)


def find_config(weights: str | Path) -> Path:
    """The Detectron2 config beside ``weights``: ``<stem>.yaml`` or ``config.yaml``.

    Raises
    ------
    FileNotFoundError
        If neither exists.
    """
    weights = Path(weights)
    for candidate in (weights.with_suffix(".yaml"), weights.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no Detectron2 config beside {weights} (looked for {weights.stem}.yaml, config.yaml)")


class Detectron2Detector:
    """A Detectron2 model as a :class:`~sorterbot_cloud.detection.base.Detector`.

    Parameters
    ----------
    config_file : path
        Detectron2 config (``.yaml``), e.g. a ``faster_rcnn_R_50_FPN_3x`` fine-tune with
        ``MODEL.ROI_HEADS.NUM_CLASSES: 2``.
    weights : path
        ``model_final.pth``.
    score_threshold, nms_iou : float
        Written into ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` / ``NMS_THRESH_TEST``.
    min_size_px : int, optional
        ``INPUT.MIN_SIZE_TEST``.
    class_id_map : mapping, optional
        Detectron2 class index -> our class id (default identity).
    device : str

    Raises
    ------
    ImportError
        If Detectron2 is not installed (with how to install it).
    FileNotFoundError
        If a file is missing.
    """

    def __init__(self, config_file: str | Path, weights: str | Path, score_threshold: float = 0.5,
                 nms_iou: float = 0.5, min_size_px: int | None = None,
                 class_id_map: Mapping[int, int] | None = None, device: str = "cpu") -> None:
        try:
            from detectron2.config import get_cfg
            from detectron2.engine import DefaultPredictor
        except ImportError as exc:
            raise ImportError(
                "the Detectron2 backend needs detectron2, which is not on PyPI: install it from "
                "https://github.com/facebookresearch/detectron2 (pip install 'git+https://github.com/"
                "facebookresearch/detectron2.git'), or use the default torchvision detector (weights/detector.pt)"
            ) from exc
        for path in (config_file, weights):
            if not Path(path).is_file():
                raise FileNotFoundError(f"Detectron2 file not found: {path}")
        cfg = get_cfg()
        cfg.merge_from_file(str(config_file))
        cfg.MODEL.WEIGHTS = str(weights)
        cfg.MODEL.DEVICE = device
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(score_threshold)
        cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = float(nms_iou)
        if min_size_px:
            cfg.INPUT.MIN_SIZE_TEST = int(min_size_px)
        self.cfg = cfg
        self.input_format = cfg.INPUT.FORMAT
        self.predictor = DefaultPredictor(cfg)
        self.class_id_map = class_id_map
        self.score_threshold = float(score_threshold)

    @classmethod
    def from_settings(cls, settings, device: str = "cpu") -> "Detectron2Detector":
        """Build from ``settings.detector_weights`` (``.pth``) and the config beside it."""
        weights = Path(settings.detector_weights)
        return cls(find_config(weights), weights, settings.detector_score_threshold, settings.detector_nms_iou,
                   settings.detector_min_size_px, device=device)

    def detect(self, image: np.ndarray) -> Detections:
        """Detect on one RGB image (converted to the model's ``INPUT.FORMAT``, BGR by default).

        Raises
        ------
        InvalidImage
            If ``image`` is not an (H, W, 3) uint8 array.
        """
        image = check_image(image)
        model_input = image[:, :, ::-1] if self.input_format == "BGR" else image
        outputs = self.predictor(np.ascontiguousarray(model_input))
        return instances_to_detections(outputs["instances"].to("cpu"), self.class_id_map, self.score_threshold)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect on several RGB images, one at a time (``DefaultPredictor`` takes one image)."""
        return [self.detect(image) for image in images]
