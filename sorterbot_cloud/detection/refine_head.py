"""A second box-regression head for the detector's final boxes (a cascade stage at inference).

Faster R-CNN regresses each proposal once. Its final boxes are good enough to count and
class objects but loose by 5-20 px per side on containers (1640x1232 frames), which is
what limits where the session trigger places containers. Cascade R-CNN (Cai &
Vasconcelos, "Cascade R-CNN: Delving into High Quality Object Detection", CVPR 2018)
regresses the boxes again with a head trained on the first stage's output boxes at a
higher IoU threshold (0.6 for its second stage) and tighter delta normalisation (box coder
weights 20, 20, 10, 10 instead of 10, 10, 5, 5). Here the first stage is the trained,
frozen detector; only the second stage's regression is learnt (scores, classes and NMS
stay those of the first stage), so it trains on features the detector already computes:
about 5 frames a second on one CPU thread instead of 1.4 for the whole detector.

:class:`RefineHead` is built into the model when ``DetectorConfig.refine_head`` is set and
used by ``TorchvisionDetector`` when ``box_refine_steps`` is 1 (without it, that step
re-applies the first-stage head, iterative bounding-box regression). :func:`~sorterbot_cloud.detection.refine_training.train_refine_head`
trains one on COCO datasets and writes a detector file that carries it.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import boxes as box_ops

#: Box coder weights of the second stage (Cascade R-CNN's second stage: its regression
#: targets are about half those of the first stage, so they are scaled up twice as much).
REFINE_BOX_WEIGHTS = (20.0, 20.0, 10.0, 10.0)
#: Box coder weights of torchvision's first stage (``RoIHeads`` default).
FIRST_STAGE_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class RefineHead(nn.Module):
    """Two fully connected layers and a class-specific box regression.

    Parameters
    ----------
    in_features : int
        Flattened RoIAlign features (channels x 7 x 7).
    units : int
        Width of the two hidden layers.
    num_classes : int
        Including background (index 0), as the first-stage predictor.
    """

    def __init__(self, in_features: int, units: int, num_classes: int) -> None:
        super().__init__()
        self.box_head = TwoMLPHead(in_features, units)
        self.bbox_pred = nn.Linear(units, num_classes * 4)
        self.box_coder = BoxCoder(REFINE_BOX_WEIGHTS)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Deltas of shape (N, num_classes * 4) for pooled features (N, C, 7, 7)."""
        return self.bbox_pred(self.box_head(pooled))

    @torch.no_grad()
    def init_from_first_stage(self, box_head: TwoMLPHead, bbox_pred: nn.Linear) -> None:
        """Start as a copy of the first stage's head, its deltas rescaled to this coder.

        With this start the refinement equals re-applying the first-stage head
        (iterative regression); training moves it from there.
        """
        self.box_head.load_state_dict(box_head.state_dict())
        scale = torch.tensor(REFINE_BOX_WEIGHTS) / torch.tensor(FIRST_STAGE_BOX_WEIGHTS)
        scale = scale.repeat(self.bbox_pred.out_features // 4)
        self.bbox_pred.weight.copy_(bbox_pred.weight * scale[:, None])
        self.bbox_pred.bias.copy_(bbox_pred.bias * scale)


def refine_boxes(model, features, boxes: list[torch.Tensor], labels: list[torch.Tensor],
                 image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Regress final boxes once more, with the model's refine head if it has one.

    Parameters
    ----------
    model : FasterRCNN
        As built by ``sorterbot_cloud.detection.torchvision_detector.build_model``.
    features : OrderedDict of Tensor
        The backbone's FPN features of the batch.
    boxes : list of Tensor of shape (N_i, 4), float
        Final boxes of each image, in the transformed (model input) pixels.
    labels : list of Tensor of shape (N_i,), int64
        Their model labels (1..C).
    image_sizes : list of (height, width)

    Returns
    -------
    list of Tensor of shape (N_i, 4)
        Refined boxes, clipped to each image.
    """
    if not sum(len(b) for b in boxes):
        return boxes
    heads = model.roi_heads
    pooled = heads.box_roi_pool(features, boxes, image_sizes)
    refine = getattr(model, "refine_head", None)
    if refine is not None:
        regression, coder = refine(pooled), refine.box_coder
    else:
        _, regression = heads.box_predictor(heads.box_head(pooled))
        coder = heads.box_coder
    decoded = coder.decode(regression, boxes).reshape(-1, regression.shape[1] // 4, 4)
    flat_labels = torch.cat(labels)
    refined = decoded[torch.arange(len(flat_labels)), flat_labels].split([len(b) for b in boxes])
    return [box_ops.clip_boxes_to_image(r, size) for r, size in zip(refined, image_sizes, strict=True)]
