"""Model construction, output contract, fp16 save/load round trip and settings of the torchvision detector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sorterbot_cloud.config import Settings
from sorterbot_cloud.detection import Detector, load_detector
from sorterbot_cloud.detection.base import check_image
from sorterbot_cloud.detection.torchvision_detector import (
    DetectorConfig,
    TorchvisionDetector,
    build_model,
    model_summary,
)
from sorterbot_cloud.errors import InvalidImage
from sorterbot_cloud.structures import Detections

torch.set_num_threads(1)

#: A small configuration so that the tests stay fast; the shipped one is DetectorConfig().
TINY = DetectorConfig(backbone="mobilenet_v3_small", fpn_channels=32, box_head_units=64, min_size_px=96,
                      max_size_px=160, anchor_sizes_px=((8, 12, 16), (24, 32, 48), (64, 96, 128), (160, 200, 256)),
                      score_threshold=0.0, detections_per_image=20, box_refine_steps=0)


@pytest.fixture(scope="module")
def tiny_detector() -> TorchvisionDetector:
    torch.manual_seed(0)
    return TorchvisionDetector.untrained(TINY)


def test_default_architecture_fits_the_size_budget():
    parts = model_summary(DetectorConfig())
    # fp16: 2 bytes per parameter; the budget is 30 MB for the detector file.
    assert parts["total"] * 2 < 30e6
    # the box head is the shrunk one (default TwoMLPHead with 1024 units alone has 13M parameters)
    assert parts["roi_heads"] < 3e6


def test_default_model_has_fpn_levels_at_strides_8_to_64():
    model = build_model(DetectorConfig()).eval()
    with torch.inference_mode():
        features = model.backbone(torch.zeros(1, 3, 256, 320))
    assert list(features) == ["0", "1", "2", "pool"]
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(32, 40), (16, 20), (8, 10), (4, 5)]
    assert {f.shape[1] for f in features.values()} == {128}


def test_backbone_batchnorm_is_trainable_not_frozen():
    model = build_model(TINY)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.weight.requires_grad for m in norms)


@pytest.mark.parametrize(
    "config, match",
    [
        pytest.param({"backbone": "resnet999"}, "backbone must be one of", id="unknown-backbone"),
        pytest.param({"anchor_sizes_px": ((8,), (16,))}, "4 levels", id="three-levels"),
        pytest.param({"anchor_sizes_px": ((8,), (16, 20), (32,), (64,))}, "equal length", id="ragged-anchors"),
        pytest.param({"score_threshold": 1.5}, "score_threshold", id="score-above-one"),
        pytest.param({"min_size_px": 800, "max_size_px": 600}, "min_size_px", id="min-above-max"),
        pytest.param({"box_refine_steps": 2}, "box_refine_steps", id="two-refine-steps"),
    ],
)
def test_config_rejects_bad_values(config, match):
    with pytest.raises(ValueError, match=match):
        DetectorConfig(**config)


def test_config_dict_round_trip():
    assert DetectorConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown detector config keys"):
        DetectorConfig.from_dict({**TINY.to_dict(), "colour": "red"})


def test_detector_satisfies_the_protocol(tiny_detector):
    assert isinstance(tiny_detector, Detector)


def test_boxes_come_back_in_original_frame_pixels(tiny_detector):
    """A 2x nearest-upscaled frame is resized back inside the model: same boxes, times 2."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    big = small.repeat(2, axis=0).repeat(2, axis=1)
    det_small, det_big = tiny_detector.detect_batch([small, big])
    assert len(det_small) > 0 and len(det_small) == len(det_big)
    np.testing.assert_allclose(det_big.boxes_xyxy, det_small.boxes_xyxy * 2, atol=0.05)
    np.testing.assert_allclose(det_big.scores, det_small.scores, atol=1e-4)
    assert det_big.boxes_xyxy[:, [0, 2]].max() <= 256 and det_big.boxes_xyxy[:, [1, 3]].max() <= 192


def test_frames_smaller_than_the_input_are_upscaled_inside_and_mapped_back(tiny_detector):
    """A 48x64 frame is resized to 96x128 inside the model; boxes come back within 64x48."""
    image = np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    det = tiny_detector.detect(image)
    assert len(det) > 0
    assert det.boxes_xyxy[:, [0, 2]].max() <= 64 and det.boxes_xyxy[:, [1, 3]].max() <= 48
    assert det.boxes_xyxy[:, 2].max() > 32  # spread over the frame, not squeezed into a corner


def test_detect_returns_validated_detections(tiny_detector):
    image = np.random.default_rng(1).integers(0, 256, (120, 150, 3), dtype=np.uint8)
    det = tiny_detector.detect(image)
    assert isinstance(det, Detections)
    assert det.boxes_xyxy.dtype == np.float32 and det.class_ids.dtype == np.int64
    assert set(np.unique(det.class_ids)) <= {0, 1}
    assert tiny_detector.detect_batch([]) == []


@pytest.mark.parametrize(
    "image, match",
    [
        pytest.param(np.zeros((10, 10), np.uint8), "shape", id="grey"),
        pytest.param(np.zeros((10, 10, 4), np.uint8), "shape", id="rgba"),
        pytest.param(np.zeros((10, 10, 3), np.float32), "uint8", id="float"),
        pytest.param(np.zeros((0, 10, 3), np.uint8), "empty", id="empty"),
        pytest.param([[1, 2, 3]], "numpy array", id="list"),
    ],
)
def test_bad_images_raise_invalid_image(tiny_detector, image, match):
    with pytest.raises(InvalidImage, match=match):
        tiny_detector.detect(image)
    with pytest.raises(InvalidImage, match=match):
        check_image(image)


def test_fp16_save_load_round_trip(tiny_detector, tmp_path):
    path = tiny_detector.save(tmp_path / "det.pt", {"recipe": "test", "seed": 7})
    blob = torch.load(path, weights_only=True)
    floats = [v for v in blob["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert json.loads(path.with_suffix(".json").read_text()) == {"recipe": "test", "seed": 7}

    loaded = TorchvisionDetector.load(path)
    assert loaded.config == TINY and loaded.metadata["seed"] == 7
    expected = {k: v.half().float() for k, v in tiny_detector.model.state_dict().items() if v.is_floating_point()}
    for key, value in loaded.model.state_dict().items():
        if key in expected:
            torch.testing.assert_close(value, expected[key])
    image = np.random.default_rng(2).integers(0, 256, (100, 140, 3), dtype=np.uint8)
    a, b = loaded.detect(image), TorchvisionDetector.load(path).detect(image)
    np.testing.assert_array_equal(a.boxes_xyxy, b.boxes_xyxy)


def test_load_applies_overrides_and_rejects_other_files(tiny_detector, tmp_path):
    path = tiny_detector.save(tmp_path / "det.pt")
    loaded = TorchvisionDetector.load(path, score_threshold=0.7, nms_iou=0.3)
    assert loaded.model.roi_heads.score_thresh == 0.7 and loaded.model.roi_heads.nms_thresh == 0.3
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sorterbot-detector"):
        TorchvisionDetector.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        TorchvisionDetector.load(tmp_path / "missing.pt")


def test_load_detector_uses_the_settings(tiny_detector, tmp_path):
    path = tiny_detector.save(tmp_path / "det.pt")
    settings = Settings.load(environ={}, detector_weights=str(path), detector_score_threshold=0.25,
                             detector_nms_iou=0.4, detector_min_size_px=128, inference_runtime="torch")
    detector = load_detector(settings)
    assert isinstance(detector, TorchvisionDetector)
    assert detector.config.score_threshold == 0.25 and detector.config.nms_iou == 0.4
    assert detector.model.transform.min_size == (128,)
    assert detector.model.transform.max_size >= 128


def _refining_copy(detector: TorchvisionDetector) -> TorchvisionDetector:
    """The same weights with one box refinement step."""
    from dataclasses import replace

    return TorchvisionDetector(detector.model, replace(detector.config, box_refine_steps=1))


def test_box_refinement_moves_boxes_by_the_heads_own_regression(tiny_detector):
    """Same scores and classes; boxes moved inside the frame; a zero regression leaves them."""
    image = np.random.default_rng(5).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    plain = tiny_detector.detect(image)
    refined = _refining_copy(tiny_detector).detect(image)
    assert len(plain) > 0
    np.testing.assert_array_equal(refined.scores, plain.scores)
    np.testing.assert_array_equal(refined.class_ids, plain.class_ids)
    assert np.abs(refined.boxes_xyxy - plain.boxes_xyxy).max() > 0.01
    assert refined.boxes_xyxy[:, [0, 2]].max() <= 160 and refined.boxes_xyxy[:, [1, 3]].max() <= 120
    assert (refined.boxes_xyxy >= 0).all()

    torch.manual_seed(0)
    zero = TorchvisionDetector.untrained(TINY)
    zero.model.load_state_dict(tiny_detector.model.state_dict())
    with torch.no_grad():
        zero.model.roi_heads.box_predictor.bbox_pred.weight.zero_()
        zero.model.roi_heads.box_predictor.bbox_pred.bias.zero_()
    base = zero.detect(image)
    again = _refining_copy(zero).detect(image)
    assert len(base) > 0
    np.testing.assert_allclose(again.boxes_xyxy, base.boxes_xyxy, atol=1e-3)


def test_box_refinement_comes_from_the_settings(tiny_detector, tmp_path):
    """On by default (Settings); DETECTOR_BOX_REFINE_STEPS=0 turns it off; 2 is refused."""
    path = tiny_detector.save(tmp_path / "det.pt")
    on = load_detector(Settings.load(environ={}, detector_weights=str(path), inference_runtime="torch"))
    off = load_detector(Settings.load(environ={"DETECTOR_BOX_REFINE_STEPS": "0"}, detector_weights=str(path),
                                      inference_runtime="torch"))
    assert on.config.box_refine_steps == 1 and off.config.box_refine_steps == 0
    with pytest.raises(ValueError, match="detector_box_refine_steps"):
        Settings.load(environ={}, detector_box_refine_steps=2)


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine terms (fresh ones are an identity map)."""
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.data.copy_(0.4 * torch.rand(n, generator=gen) - 0.2)


def test_fused_detector_matches_the_unfused_one_and_refuses_to_save(tmp_path):
    torch.manual_seed(1)
    model = build_model(TINY)
    _randomise_batchnorm(model)
    path = TorchvisionDetector(model, TINY).save(tmp_path / "d.pt")
    unfused = TorchvisionDetector.load(path)
    fused = TorchvisionDetector.load(path, fuse=True)
    assert fused.fused and not unfused.fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in unfused.model.modules())
    image = np.random.default_rng(4).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    a, b = unfused.detect(image), fused.detect(image)
    assert len(a.scores) > 0 and len(a.scores) == len(b.scores)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
    np.testing.assert_allclose(b.boxes_xyxy, a.boxes_xyxy, atol=0.05)
    np.testing.assert_array_equal(b.class_ids, a.class_ids)
    with pytest.raises(RuntimeError, match="fused detector cannot be saved"):
        fused.save(tmp_path / "again.pt")


def test_channels_last_backbone_keeps_outputs_and_state_dict_keys():
    """:func:`backbone_channels_last` (the inference form, applied by ``fuse``): the backbone's
    convolutions hold NHWC weights and see NHWC input, detections agree with the plain model
    to float rounding, and the state dict keeps its keys."""
    from sorterbot_cloud.detection.torchvision_detector import backbone_channels_last

    torch.manual_seed(2)
    plain = TorchvisionDetector(build_model(TINY), TINY)
    _randomise_batchnorm(plain.model)
    nhwc = TorchvisionDetector(build_model(TINY), TINY)
    nhwc.model.load_state_dict(plain.model.state_dict())
    keys = list(nhwc.model.state_dict())
    backbone_channels_last(nhwc.model)
    assert list(nhwc.model.state_dict()) == keys
    convs = [m for m in nhwc.model.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    seen = []
    convs[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    image = np.random.default_rng(6).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    a, b = plain.detect(image), nhwc.detect(image)
    assert seen and all(seen)
    assert len(a.scores) > 0 and len(a.scores) == len(b.scores)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
    np.testing.assert_allclose(b.boxes_xyxy, a.boxes_xyxy, atol=0.05)


def test_fuse_conv_bn_folds_resnet_blocks_exactly():
    import torchvision

    from sorterbot_cloud.detection.torchvision_detector import fuse_conv_bn

    net = torchvision.models.resnet18(weights=None)
    _randomise_batchnorm(net)
    net.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        before = net(x)
    assert fuse_conv_bn(net) == 20  # stem 1 + 8 blocks x 2 + 3 downsample convolutions
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    with torch.inference_mode():
        after = net(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
