"""Training code on a tiny OpenCV-drawn dataset: augmentation, mixing, a few iterations, resume, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sorterbot_cloud.detection.data import AugmentConfig, DatasetSpec, MixedSampler, augment, load_coco, parse_class_map
from sorterbot_cloud.detection.torchvision_detector import FORMAT, DetectorConfig, TorchvisionDetector
from sorterbot_cloud.detection.toydata import write_toy_coco
from sorterbot_cloud.detection.train import (
    DetectorTrainConfig,
    export_checkpoint,
    freeze_except,
    lr_factor,
    train,
    train_mode,
)

torch.set_num_threads(1)

TINY = DetectorConfig(backbone="mobilenet_v3_small", fpn_channels=32, box_head_units=64, min_size_px=120,
                      max_size_px=160, anchor_sizes_px=((8, 12, 16), (24, 32, 48), (64, 96, 128), (160, 200, 256)),
                      rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                      rpn_batch_size_per_image=64, box_batch_size_per_image=32)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_coco(tmp_path_factory.mktemp("toy"), n_images=6, seed=0)


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("a.json:imgs", ("a.json", "imgs", 1.0, None), id="plain"),
        pytest.param("a.json:imgs:3", ("a.json", "imgs", 3.0, None), id="weight"),
        pytest.param("a.json:imgs:0.5:0.35", ("a.json", "imgs", 0.5, 0.35), id="weight-scale"),
    ],
)
def test_dataset_spec_parse(text, expected):
    spec = DatasetSpec.parse(text)
    assert (str(spec.annotations), str(spec.images_dir), spec.weight, spec.scale) == expected


@pytest.mark.parametrize(
    "text, match",
    [pytest.param("a.json", "annotations.json:images_dir", id="no-dir"),
     pytest.param("a.json:imgs:x", "numbers", id="bad-weight"),
     pytest.param("a.json:imgs:-1", "positive", id="negative-weight")],
)
def test_dataset_spec_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        DatasetSpec.parse(text)


def test_class_map_and_loading(toy):
    assert parse_class_map(["ESP8266=item", "bin = container"]) == {"ESP8266": "item", "bin": "container"}
    with pytest.raises(ValueError, match="target must be one of"):
        parse_class_map(["ESP8266=board"])
    records = load_coco(toy, toy.parent)
    assert len(records) == 6 and all(set(r.class_ids) == {0, 1} for r in records)
    only_items = load_coco(toy, toy.parent, {"container": "ignore"})
    assert all(set(r.class_ids) == {0} for r in only_items)
    with pytest.raises(ValueError, match="maps onto"):
        load_coco(toy, toy.parent, {"item": "ignore", "container": "ignore"})


def test_augment_keeps_boxes_on_their_pixels():
    """A bright square on black: after scale, crop, flip its box still frames the bright pixels."""
    rng = np.random.default_rng(0)
    image = np.zeros((300, 400, 3), np.uint8)
    image[100:140, 250:300] = 255
    boxes = np.float32([[250, 100, 300, 140]])
    config = AugmentConfig(crop_px=200, scale_jitter=(0.9, 1.1), hflip=0.5, color=0.0)
    kept = 0
    for _ in range(20):
        out, out_boxes, out_cls = augment(image, boxes, np.int64([0]), 1.0, config, rng)
        assert out.shape[0] <= 200 and out.shape[1] <= 200
        if len(out_boxes):
            kept += 1
            x0, y0, x1, y1 = np.round(out_boxes[0]).astype(int)
            bright = np.argwhere(out[..., 0] > 128)
            assert abs(bright[:, 1].min() - x0) <= 2 and abs(bright[:, 1].max() + 1 - x1) <= 2
            assert abs(bright[:, 0].min() - y0) <= 2 and abs(bright[:, 0].max() + 1 - y1) <= 2
    assert kept > 0


def test_augment_drops_boxes_mostly_outside_the_crop():
    rng = np.random.default_rng(1)
    image = np.zeros((100, 1000, 3), np.uint8)
    boxes = np.float32([[0, 0, 50, 50], [900, 0, 1000, 50]])
    out, out_boxes, _ = augment(image, boxes, np.int64([0, 1]), 1.0,
                                AugmentConfig(crop_px=100, scale_jitter=(1.0, 1.0), hflip=0.0, color=0.0), rng)
    assert out.shape == (100, 100, 3)
    assert len(out_boxes) <= 1


def test_mixed_sampler_weights(toy):
    records = load_coco(toy, toy.parent)
    sampler = MixedSampler([(DatasetSpec(toy, toy.parent, 3.0), records), (DatasetSpec(toy, toy.parent, 1.0), records)],
                           120, AugmentConfig(crop_px=96), seed=0)
    np.testing.assert_allclose(sampler.probabilities, [0.75, 0.25])
    image, target = sampler.sample()
    assert image.dtype == torch.float32 and image.shape[0] == 3 and max(image.shape[1:]) <= 96
    assert target["boxes"].shape[1] == 4 and target["labels"].min() >= 1


def test_lr_schedule_warms_up_then_decays():
    tc = DetectorTrainConfig(iterations=100, warmup_iterations=10)
    assert lr_factor(0.0, 0, tc) == pytest.approx(0.01)
    assert lr_factor(0.1, 10, tc) > lr_factor(0.9, 90, tc) > lr_factor(1.0, 100, tc) == pytest.approx(0.01)


def test_tiny_training_run_checkpoints_resumes_and_exports(toy, tmp_path):
    spec = DatasetSpec(toy, toy.parent)
    tc = DetectorTrainConfig(iterations=4, batch_size=2, warmup_iterations=1, checkpoint_every=2, log_every=2, val_every=2)
    out = tmp_path / "run"
    path = train([spec], out, detector_config=TINY, train_config=tc, augment_config=AugmentConfig(crop_px=128),
                 val_dataset=spec, val_max_images=2, recipe="pytest", progress=False)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert [r["iteration"] for r in losses] == [2, 4]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in losses)
    assert any("validation" in r for r in rows)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["recipe"] == "pytest" and meta["iterations_done"] == 4 and meta["data"][0]["images"] == 6
    assert TorchvisionDetector.load(path).config.fpn_channels == 32

    tc_more = DetectorTrainConfig(iterations=6, batch_size=2, warmup_iterations=1, checkpoint_every=2, log_every=2)
    train([spec], out, detector_config=TINY, train_config=tc_more, augment_config=AugmentConfig(crop_px=128),
          resume=True, progress=False)
    state = torch.load(out / "checkpoint_last.pt", weights_only=False)
    assert state["iteration"] == 6

    exported = export_checkpoint(out / "checkpoint_last.pt", tmp_path / "exported.pt")
    assert json.loads(exported.with_suffix(".json").read_text())["iterations_done"] == 6
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    assert TorchvisionDetector.load(exported).detect(image) is not None


def test_resume_without_checkpoint_raises(toy, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train([DatasetSpec(toy, toy.parent)], tmp_path, detector_config=TINY, resume=True, progress=False)


def test_merge_coco_renumbers_ids_and_keeps_files(tmp_path):
    from sorterbot_cloud.detection.data import merge_coco

    a = write_toy_coco(tmp_path / "a", n_images=2, seed=1)
    b = write_toy_coco(tmp_path / "b", n_images=3, seed=2)
    merged = merge_coco([f"{a}:{a.parent}", f"{b}:{b.parent}"], tmp_path / "m" / "all.json")
    assert [img["id"] for img in merged["images"]] == [1, 2, 3, 4, 5]
    assert len({ann["id"] for ann in merged["annotations"]}) == len(merged["annotations"])
    records = load_coco(tmp_path / "m" / "all.json", tmp_path / "m")
    assert len(records) == 5 and all(r.path.is_file() for r in records)
    originals = load_coco(b, b.parent)
    np.testing.assert_array_equal(records[2].boxes_xyxy, originals[0].boxes_xyxy)


def test_init_from_is_a_warm_restart(toy, tmp_path):
    """--init-from takes the weights and detector config, but a fresh iteration count and schedule."""
    spec = DatasetSpec(toy, toy.parent)
    tc = DetectorTrainConfig(iterations=2, batch_size=2, warmup_iterations=1, checkpoint_every=2, log_every=2)
    first = tmp_path / "first"
    train([spec], first, detector_config=TINY, train_config=tc, augment_config=AugmentConfig(crop_px=128), progress=False)
    source = torch.load(first / "checkpoint_last.pt", weights_only=False)

    other_config = DetectorConfig(backbone="mobilenet_v3_small", fpn_channels=16, box_head_units=32, min_size_px=120, max_size_px=160)
    # lr 0: one step that leaves the weights where the checkpoint put them
    tc_still = DetectorTrainConfig(iterations=1, batch_size=2, lr=0.0, warmup_iterations=0, checkpoint_every=2, log_every=2)
    second = tmp_path / "second"
    train([spec], second, detector_config=other_config, train_config=tc_still, augment_config=AugmentConfig(crop_px=128),
          init_from=first / "checkpoint_last.pt", progress=False)
    state = torch.load(second / "checkpoint_last.pt", weights_only=False)
    assert state["iteration"] == 1  # a fresh count, not 2 + 1
    assert state["detector_config"]["fpn_channels"] == TINY.fpn_channels  # the checkpoint's config wins
    weights = [name for name in source["model"] if "running_" not in name and "num_batches" not in name]
    assert weights
    for name in weights:
        assert torch.equal(state["model"][name], source["model"][name]), name

    with pytest.raises(FileNotFoundError, match="init-from"):
        train([spec], tmp_path / "third", detector_config=TINY, train_config=tc_still, init_from=tmp_path / "missing.pt",
              progress=False)


def test_init_from_an_exported_detector_file(toy, tmp_path):
    """--init-from also takes an exported fp16 detector.pt (the shipped weights): the
    fine-tune starts from those weights, cast back to float32."""
    spec = DatasetSpec(toy, toy.parent)
    tc = DetectorTrainConfig(iterations=2, batch_size=2, warmup_iterations=1, checkpoint_every=2, log_every=2)
    first = tmp_path / "first"
    train([spec], first, detector_config=TINY, train_config=tc, augment_config=AugmentConfig(crop_px=128), progress=False)
    exported = torch.load(first / "detector.pt", weights_only=True)
    assert exported["format"] == FORMAT

    tc_still = DetectorTrainConfig(iterations=1, batch_size=2, lr=0.0, warmup_iterations=0, checkpoint_every=2, log_every=2)
    second = tmp_path / "second"
    train([spec], second, train_config=tc_still, augment_config=AugmentConfig(crop_px=128), init_from=first / "detector.pt", progress=False)
    state = torch.load(second / "checkpoint_last.pt", weights_only=False)
    assert state["detector_config"]["fpn_channels"] == TINY.fpn_channels
    weights = [name for name in exported["state_dict"] if "running_" not in name and "num_batches" not in name
               and exported["state_dict"][name].is_floating_point()]
    assert weights
    for name in weights:
        assert state["model"][name].dtype == torch.float32
        torch.testing.assert_close(state["model"][name], exported["state_dict"][name].float(), rtol=0, atol=0, msg=name)


def test_train_only_changes_the_named_layers_and_nothing_else(toy, tmp_path):
    """--train-only: the named parameters move, every other tensor (BatchNorm running
    statistics included) stays exactly as in the starting file."""
    spec = DatasetSpec(toy, toy.parent)
    tc = DetectorTrainConfig(iterations=2, batch_size=2, warmup_iterations=1, checkpoint_every=2, log_every=2)
    first = tmp_path / "first"
    train([spec], first, detector_config=TINY, train_config=tc, augment_config=AugmentConfig(crop_px=128), progress=False)
    start = torch.load(first / "checkpoint_last.pt", weights_only=False)["model"]

    prefix = "roi_heads.box_predictor."
    tc_head = DetectorTrainConfig(iterations=3, batch_size=2, lr=1e-2, warmup_iterations=0, checkpoint_every=3, log_every=3,
                          train_only=(prefix,))
    second = tmp_path / "second"
    train([spec], second, train_config=tc_head, augment_config=AugmentConfig(crop_px=128),
          init_from=first / "checkpoint_last.pt", progress=False)
    after = torch.load(second / "checkpoint_last.pt", weights_only=False)["model"]
    moved = [name for name in start if not torch.equal(start[name], after[name])]
    assert moved and all(name.startswith(prefix) for name in moved), moved
    assert any("running_mean" in name for name in start)  # the backbone's BatchNorm statistics were there to move
    with pytest.raises(ValueError, match="matches no parameter"):
        train([spec], tmp_path / "third", train_config=DetectorTrainConfig(iterations=1, batch_size=2, train_only=("nope.",)),
              init_from=first / "checkpoint_last.pt", progress=False)


def test_freeze_except_and_train_mode_keep_frozen_batchnorm_in_eval():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1),
                                torch.nn.BatchNorm2d(2))
    n = freeze_except(model, ["2.", "3."])
    assert n == (4 * 2 + 2) + (2 + 2)
    train_mode(model)
    assert not model[1].training and model[3].training
    assert freeze_except(model, []) == sum(p.numel() for p in model.parameters())
