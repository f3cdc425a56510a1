"""The default detector: torchvision Faster R-CNN with a CPU-sized backbone.

The meta-architecture is the one of Detectron2's ``faster_rcnn_R_50_FPN_3x`` (the
original SorterBot model): a backbone with a feature pyramid (FPN, Lin et al. 2017),
a region proposal network and a two-layer box head on RoIAlign features (Ren et al.
2015). To fit a 2-core CPU it uses MobileNetV3-Large (Howard et al. 2019) trained from
scratch (no pretrained weights are reachable here) with trainable BatchNorm, an FPN with
fewer channels on strides 8, 16 and 32 (plus a max-pooled stride-64 level for the
RPN), anchors sized for the objects of a sorting table (items about 25..110 px and
containers about 150..500 px at a 608 px short side) and a 256-unit box head instead
of the default 1024-unit one (13M parameters).

Model, weights and preprocessing travel together: one ``.pt`` file holds the
:class:`DetectorConfig` (backbone, input size, anchors, class names, thresholds) and an
fp16 ``state_dict``; a JSON sidecar beside it (``detector.json``) holds the recipe,
data, seed and metrics. Resizing happens inside the model; boxes come back in the
pixels of the frame that was passed in.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.utils.fusion
from torch import nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from sorterbot_cloud.config import Settings
from sorterbot_cloud.structures import CLASS_NAMES, Detections

from .base import check_image
from .refine_head import RefineHead, refine_boxes

FORMAT = "sorterbot-detector/1"

#: Backbones: constructor and the ``features`` indices whose outputs feed the FPN
#: (the last block at stride 8, 16 and 32 of torchvision's MobileNetV3 ``features``).
BACKBONES = {
    "mobilenet_v3_large": (mobilenet_v3_large, (6, 12, 16)),
    "mobilenet_v3_small": (mobilenet_v3_small, (3, 8, 12)),
}


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture and operating point of a :class:`TorchvisionDetector`.

    Parameters
    ----------
    backbone : str
        A key of :data:`BACKBONES`.
    fpn_channels : int
        Channels of every FPN level.
    min_size_px, max_size_px : int
        Frames are resized (inside the model) so that the short side is ``min_size_px``
        unless the long side would exceed ``max_size_px``. The operating-point defaults
        (input size, ``score_threshold``, ``nms_iou``, ``box_refine_steps``) are the
        service's (:class:`sorterbot_cloud.config.Settings`); 864 px is the long-side
        cap of the shipped weights at 512.
    anchor_sizes_px : tuple of tuple of int
        Anchor sizes (square-root of the area, in resized-input pixels) per pyramid
        level, strides 8, 16, 32 and 64; every level must have as many sizes.
    aspect_ratios : tuple of float
        Anchor height / width ratios, the same on every level.
    box_head_units : int
        Width of the two fully connected layers of the box head.
    class_names : tuple of str
        Names of the foreground classes, in ``class_id`` order.
    score_threshold : float
        Detections below this score are dropped.
    nms_iou : float
        IoU threshold of the per-class NMS of the box head.
    detections_per_image : int
    rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test : int
        Proposals kept per level before NMS and in all after NMS, at inference.
    rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train : int
        The same during training.
    rpn_batch_size_per_image, box_batch_size_per_image : int
        Sampled anchors / proposals per image for the RPN and box losses.
    box_refine_steps : int
        Inference only, 0 or 1: regress the final boxes once more, with the model's
        refine head when it has one (``refine_head``), else with the box head itself
        (iterative bounding-box regression, Gidaris & Komodakis, "Object detection via a
        multi-region & semantic segmentation-aware CNN model", ICCV 2015). Scores,
        classes and NMS are those of the first pass.
    refine_head : bool
        The model carries a second box-regression head trained on its own final boxes
        (:mod:`sorterbot_cloud.detection.refine_head`, a Cascade R-CNN stage).
    """

    backbone: str = "mobilenet_v3_large"
    fpn_channels: int = 128
    min_size_px: int = Settings.detector_min_size_px
    max_size_px: int = 864
    anchor_sizes_px: tuple = ((16, 24, 32), (48, 64, 96), (128, 176, 240), (320, 440, 600))
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    box_head_units: int = 256
    class_names: tuple = CLASS_NAMES
    score_threshold: float = Settings.detector_score_threshold
    nms_iou: float = Settings.detector_nms_iou
    detections_per_image: int = 100
    rpn_pre_nms_top_n_test: int = 500
    rpn_post_nms_top_n_test: int = 200
    rpn_pre_nms_top_n_train: int = 600
    rpn_post_nms_top_n_train: int = 300
    rpn_batch_size_per_image: int = 128
    box_batch_size_per_image: int = 64
    box_refine_steps: int = Settings.detector_box_refine_steps
    refine_head: bool = False

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        sizes = tuple(tuple(int(s) for s in level) for level in self.anchor_sizes_px)
        if len(sizes) != 4 or len({len(level) for level in sizes}) != 1:
            raise ValueError(f"anchor_sizes_px must hold 4 levels of equal length, got {self.anchor_sizes_px}")
        object.__setattr__(self, "anchor_sizes_px", sizes)
        object.__setattr__(self, "aspect_ratios", tuple(float(r) for r in self.aspect_ratios))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not 0.0 <= self.score_threshold <= 1.0 or not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(
                f"score_threshold must be in [0, 1] and nms_iou in (0, 1], got {self.score_threshold}, {self.nms_iou}"
            )
        if self.min_size_px <= 0 or self.max_size_px < self.min_size_px:
            raise ValueError(f"need 0 < min_size_px <= max_size_px, got {self.min_size_px}, {self.max_size_px}")
        if self.box_refine_steps not in (0, 1):
            raise ValueError(f"box_refine_steps must be 0 or 1, got {self.box_refine_steps}")

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "DetectorConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown detector config keys: {sorted(unknown)}")
        return cls(**data)


class FrameTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform that can skip resizing while training.

    Training crops are prepared at the model's input scale by the data pipeline
    (:mod:`sorterbot_cloud.detection.data`), so they must not be resized again; at inference the frame is
    resized to ``min_size``/``max_size`` as usual and the boxes are mapped back to the
    frame's pixels by :meth:`postprocess`.
    """

    def __init__(self, *args: Any, resize_in_training: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resize_in_training = resize_in_training

    def resize(self, image, target=None):
        if self.training and not self.resize_in_training:
            return image, target
        return super().resize(image, target)


def build_backbone(config: DetectorConfig) -> BackboneWithFPN:
    """MobileNetV3 features (random init, trainable BatchNorm) + FPN on strides 8/16/32 (+64 by max-pool).

    Returns
    -------
    BackboneWithFPN
        Outputs ``OrderedDict`` with keys ``'0'``, ``'1'``, ``'2'`` (strides 8, 16, 32) and
        ``'pool'`` (stride 64), each with ``config.fpn_channels`` channels.
    """
    constructor, layers = BACKBONES[config.backbone]
    features = constructor(weights=None, norm_layer=nn.BatchNorm2d).features
    return_layers = {str(index): str(level) for level, index in enumerate(layers)}
    in_channels = [features[index].out_channels for index in layers]
    return BackboneWithFPN(
        features, return_layers, in_channels, config.fpn_channels, extra_blocks=LastLevelMaxPool()
    )


#: Attribute pairs (convolution, its BatchNorm) inside torchvision's ResNet blocks and stem.
_CONV_BN_ATTRIBUTES = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def backbone_channels_last(model: nn.Module) -> nn.Module:
    """Run a torchvision detector's backbone in the channels-last (NHWC) layout, in place.

    The backbone's weights are converted (``Module.to(memory_format=torch.channels_last)``)
    and a forward pre-hook converts its input batch, so the convolutions take oneDNN's
    NHWC path on the CPU; the heads accept the resulting feature maps as they are. Outputs
    agree to float rounding (boxes within 2e-4 px, scores within 2e-6 on 1640x1232 frames);
    one frame of the shipped detector took 200 ms instead of 224 (one thread, session 23).
    The state dict's keys and values are unchanged.

    Parameters
    ----------
    model : nn.Module
        A detector with a ``backbone`` attribute (torchvision's ``GeneralizedRCNN``).

    Returns
    -------
    nn.Module
        ``model``.
    """
    model.backbone.to(memory_format=torch.channels_last)
    model.backbone.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:]))
    return model


def fuse_conv_bn(model: nn.Module) -> int:
    """Fold every BatchNorm2d into the Conv2d that feeds it, in place (inference only).

    In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one
    convolution with rescaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``);
    the BatchNorm is replaced by ``nn.Identity``. Outputs agree to float rounding (boxes
    within 1e-4 px on 1640x1232 frames) and one pass is about 13 % faster on a CPU.
    Handles convolutions followed by their BatchNorm inside ``nn.Sequential`` (MobileNetV3's
    ``Conv2dNormActivation``, ResNet's ``downsample``) and ResNet's ``conv<i>``/``bn<i>``
    attribute pairs, so torchvision's R50-FPN reference can be fused the same way.

    Parameters
    ----------
    model : nn.Module
        Put in eval mode here; train it no further afterwards.

    Returns
    -------
    int
        Number of BatchNorm layers folded.
    """
    model.eval()
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module._modules[conv_name] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                    module._modules[bn_name] = nn.Identity()
                    folded += 1
        for conv_name, bn_name in _CONV_BN_ATTRIBUTES:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def build_model(config: DetectorConfig) -> FasterRCNN:
    """Build the (randomly initialised) Faster R-CNN described by ``config``.

    Returns
    -------
    torchvision.models.detection.FasterRCNN
        Labels 1..C are ``class_id + 1`` (0 is background).
    """
    backbone = build_backbone(config)
    anchors = AnchorGenerator(
        sizes=config.anchor_sizes_px, aspect_ratios=(config.aspect_ratios,) * len(config.anchor_sizes_px)
    )
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(config.fpn_channels * 7 * 7, config.box_head_units)
    predictor = FastRCNNPredictor(config.box_head_units, len(config.class_names) + 1)
    model = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=config.min_size_px,
        max_size=config.max_size_px,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        box_roi_pool=roi_pool,
        box_head=head,
        box_predictor=predictor,
        box_score_thresh=config.score_threshold,
        box_nms_thresh=config.nms_iou,
        box_detections_per_img=config.detections_per_image,
        box_batch_size_per_image=config.box_batch_size_per_image,
    )
    if config.refine_head:

        model.refine_head = RefineHead(config.fpn_channels * 7 * 7, config.box_head_units, len(config.class_names) + 1)
    old = model.transform
    model.transform = FrameTransform(old.min_size, old.max_size, old.image_mean, old.image_std)
    return model


def fp16_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The model's ``state_dict`` with floating-point tensors cast to float16 (integers kept)."""
    return OrderedDict(
        (k, v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    )


def load_detector_file(path: str | Path) -> dict:
    """The contents of a detector file written by :meth:`TorchvisionDetector.save` (on the CPU).

    Returns
    -------
    dict
        ``{"format": FORMAT, "config": dict, "state_dict": {name: tensor}}`` (fp16 floats).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a detector file of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector weights not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    return blob


class TorchvisionDetector:
    """A trained :func:`build_model` network behind the :class:`~sorterbot_cloud.detection.base.Detector` interface.

    Parameters
    ----------
    model : FasterRCNN
        Built by :func:`build_model` from ``config``.
    config : DetectorConfig
    device : str or torch.device
    metadata : dict, optional
        The JSON sidecar (recipe, data, seed, metrics), for provenance.
    """

    def __init__(self, model: FasterRCNN, config: DetectorConfig, device: str | torch.device = "cpu",
                 metadata: dict | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.metadata = metadata or {}
        #: Whether BatchNorm layers were folded (:meth:`fuse`); a fused model is not saved.
        self.fused = False

    def fuse(self) -> "TorchvisionDetector":
        """Prepare for inference: fold BatchNorm into the convolutions (:func:`fuse_conv_bn`)
        and run the backbone channels-last (:func:`backbone_channels_last`); returns self."""
        if not self.fused:
            fuse_conv_bn(self.model)
            backbone_channels_last(self.model)
            self.fused = True
        return self

    # -- construction ---------------------------------------------------------------
    @classmethod
    def untrained(cls, config: DetectorConfig | None = None, device: str = "cpu") -> "TorchvisionDetector":
        """A randomly initialised detector (tests, benchmarks)."""
        config = config or DetectorConfig()
        return cls(build_model(config), config, device)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", fuse: bool = False, **overrides: Any) -> "TorchvisionDetector":
        """Load a detector file written by :meth:`save`.

        Parameters
        ----------
        path : path
            ``.pt`` file; its ``.json`` sidecar is read when present.
        device : str
        fuse : bool
            Fold BatchNorm into the convolutions (:meth:`fuse`): the inference form the
            service, ``evaluate-detector`` and ``bench-detector`` use.
        **overrides
            :class:`DetectorConfig` fields to change at inference (``score_threshold``,
            ``nms_iou``, ``min_size_px``, ``max_size_px``, ...).

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If the file is not a detector file of this format.
        """
        path = Path(path)
        blob = load_detector_file(path)
        config = DetectorConfig.from_dict(blob["config"])
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides:
            config = replace(config, **overrides)
        model = build_model(config)
        model.load_state_dict(blob["state_dict"])
        model.float()
        sidecar = path.with_suffix(".json")
        metadata = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        detector = cls(model, config, device, metadata)
        return detector.fuse() if fuse else detector

    @classmethod
    def from_settings(cls, settings, device: str = "cpu") -> "TorchvisionDetector":
        """Load ``settings.detector_weights`` (fused, :meth:`fuse`) with the settings' threshold, NMS IoU, input size and box refinement."""
        config = cls._peek_config(settings.detector_weights)
        max_size = max(config.max_size_px, int(round(settings.detector_min_size_px * config.max_size_px
                                                     / config.min_size_px)))
        return cls.load(
            settings.detector_weights,
            device=device,
            fuse=True,
            score_threshold=float(settings.detector_score_threshold),
            nms_iou=float(settings.detector_nms_iou),
            min_size_px=int(settings.detector_min_size_px),
            max_size_px=max_size,
            box_refine_steps=int(settings.detector_box_refine_steps),
        )

    @staticmethod
    def _peek_config(path: str | Path) -> DetectorConfig:
        return DetectorConfig.from_dict(load_detector_file(path)["config"])

    def save(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write the config + fp16 ``state_dict`` to ``path`` and ``metadata`` to its ``.json`` sidecar.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        RuntimeError
            If the detector was fused (:meth:`fuse`): its BatchNorm layers are gone.
        """
        if self.fused:
            raise RuntimeError("a fused detector cannot be saved: save the detector before fuse(), or load it with fuse=False")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, "config": self.config.to_dict(), "state_dict": fp16_state_dict(self.model)},
                   path)
        if metadata is not None:
            self.metadata = metadata
            path.with_suffix(".json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        return path

    # -- inference ------------------------------------------------------------------
    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).to(self.device).permute(2, 0, 1).float().div_(255.0)

    def _shrink(self, image: np.ndarray) -> np.ndarray:
        """Area-average a frame down to the model's input size before it enters the model.

        The model's own resize is bilinear without anti-aliasing; frames much larger than
        the input (1640x1232 -> 682x512) would alias, unlike the area-resampled training
        crops (:func:`sorterbot_cloud.detection.data.augment`). After this step the model's resize is a
        near no-op; its ``postprocess`` maps boxes to the shrunk frame, and
        :meth:`detect_batch` scales them back to the original pixels.
        """
        h, w = image.shape[:2]
        scale = min(self.config.min_size_px / min(h, w), self.config.max_size_px / max(h, w))
        if scale >= 1.0:
            return image
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    @torch.inference_mode()
    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect on several RGB images.

        Parameters
        ----------
        images : sequence of ndarray of shape (H_i, W_i, 3), uint8, RGB

        Returns
        -------
        list of Detections
            Boxes in the pixels of each original image, scores >= ``config.score_threshold``.

        Raises
        ------
        InvalidImage
            If an image is not an (H, W, 3) uint8 array.
        """
        checked = [check_image(img, f"images[{i}]") for i, img in enumerate(images)]
        if not checked:
            return []
        shrunk = [self._shrink(img) for img in checked]
        self.model.eval()
        tensors = [self._to_tensor(img) for img in shrunk]
        outputs = self._forward_refined(tensors) if self.config.box_refine_steps else self.model(tensors)
        results = []
        for out, img, small in zip(outputs, checked, shrunk, strict=False):
            boxes = out["boxes"].float().cpu().numpy()
            h, w = img.shape[:2]
            boxes *= np.float32([w / small.shape[1], h / small.shape[0]] * 2)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            results.append(
                Detections(boxes, out["scores"].float().cpu().numpy().clip(0, 1), out["labels"].cpu().numpy() - 1)
            )
        return results

    def _forward_refined(self, tensors: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The model's inference forward with the final boxes regressed once more.

        Each final box is pooled again (RoIAlign on the same features) and moved by the
        refine head's regression for its own class, or the box head's where the model has
        no refine head (:func:`sorterbot_cloud.detection.refine_head.refine_boxes`); scores and classes stay
        those of the first pass. Re-applying the shipped box head tightened container sides
        on the 160 held-out frames from 6.0 to 5.2 px mean absolute error (items 3.10 ->
        3.06 px); a second extra step was worse (5.4 px), hence at most one.
        """

        model = self.model
        original_sizes = [tuple(t.shape[-2:]) for t in tensors]
        images, _ = model.transform(tensors)
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        detections, _ = model.roi_heads(features, proposals, images.image_sizes)
        refined = refine_boxes(model, features, [d["boxes"] for d in detections], [d["labels"] for d in detections],
                               images.image_sizes)
        for d, boxes in zip(detections, refined, strict=True):
            d["boxes"] = boxes
        return model.transform.postprocess(detections, images.image_sizes, original_sizes)

    def detect(self, image: np.ndarray) -> Detections:
        """Detect on one RGB image; see :meth:`detect_batch`."""
        return self.detect_batch([image])[0]

    def parameter_count(self) -> int:
        """Number of parameters of the network."""
        return sum(p.numel() for p in self.model.parameters())


def model_summary(config: DetectorConfig) -> dict:
    """Parameter counts of a freshly built model: total and per top-level part."""
    model = build_model(config)
    parts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    parts["total"] = sum(parts.values())
    return parts


__all__ = [
    "BACKBONES",
    "DetectorConfig",
    "FrameTransform",
    "TorchvisionDetector",
    "build_backbone",
    "build_model",
    "fp16_state_dict",
    "model_summary",
]
