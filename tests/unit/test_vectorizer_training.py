"""Embedder training (a few steps on synthetic shapes), loss, augmentation and the CLI commands."""

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sorterbot_cloud.embedding.cli import evaluate_embedder, train_embedder
from sorterbot_cloud.embedding.crops import letterbox
from sorterbot_cloud.embedding.data import CropSet, load_crop_folder, load_voc_crops
from sorterbot_cloud.embedding.embedder import Embedder, build_resnet18
from sorterbot_cloud.embedding.training import (
    CHANNEL_PERMUTATIONS,
    GREY,
    Augmenter,
    BatchSampler,
    EmbedderTrainConfig,
    centre_mask,
    class_draw_weights,
    colour_classes,
    export_weights,
    foreground_masks,
    recolour,
    supcon_loss,
    swap_background,
)
from sorterbot_cloud.embedding.training import train_embedder as run_training

torch.set_num_threads(1)

#: Synthetic item types: (RGB colour, shape).
TYPES = {
    "red_disc": ((220, 30, 30), "disc"),
    "blue_square": ((30, 60, 220), "square"),
    "yellow_bar": ((230, 210, 30), "bar"),
    "green_disc": ((40, 180, 60), "disc"),
}


def draw_item(colour, shape, rng):
    """A coloured shape on a noisy grey table, (h, w, 3) uint8 RGB."""
    size = int(rng.integers(36, 56))
    img = rng.normal(150, 12, size=(size, size, 3)).clip(0, 255).astype(np.uint8)
    c = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in colour)
    m = size // 2
    if shape == "disc":
        cv2.circle(img, (m, m), int(size * 0.38), c, -1)
    elif shape == "square":
        cv2.rectangle(img, (size // 6, size // 6), (size - size // 6, size - size // 6), c, -1)
    else:
        cv2.rectangle(img, (size // 10, size // 3), (size - size // 10, size - size // 3), c, -1)
    return img


def synthetic_set(per_type=6, seed=0, names=tuple(TYPES)):
    rng = np.random.default_rng(seed)
    crops, ids = [], []
    for i, name in enumerate(names):
        colour, shape = TYPES[name]
        crops += [draw_item(colour, shape, rng) for _ in range(per_type)]
        ids += [i] * per_type
    return CropSet(crops, np.asarray(ids, np.int64), list(names))


def write_folder(root, crop_set):
    for i, crop in enumerate(crop_set.crops):
        folder = root / crop_set.type_names[crop_set.type_ids[i]]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))


TINY = dict(input_size_px=32, steps=3, types_per_batch=3, crops_per_type=2, warmup_steps=1, checkpoint_every=2, eval_every=3, log_every=1)


def test_supcon_loss_two_positives_only_is_zero():
    z = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    assert float(supcon_loss(z, torch.tensor([3, 3]))) == pytest.approx(0.0, abs=1e-6)


def test_supcon_loss_prefers_grouped_features():
    labels = torch.tensor([0, 0, 1, 1])
    grouped = torch.tensor([[1.0, 0], [1.0, 0], [-1.0, 0], [-1.0, 0]])
    mixed = torch.tensor([[1.0, 0], [-1.0, 0], [1.0, 0], [-1.0, 0]])
    assert float(supcon_loss(grouped, labels)) < float(supcon_loss(mixed, labels))


def test_supcon_loss_ignores_anchors_without_positives():
    z = torch.nn.functional.normalize(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    assert float(supcon_loss(z, torch.tensor([0, 1, 2, 3]))) == 0.0
    # anchors 2 and 3 have no positive: only anchors 0 and 1 count
    only_pairs = supcon_loss(z, torch.tensor([0, 0, 1, 2]))
    logits = (z @ z.T / 0.1).masked_fill(torch.eye(4, dtype=torch.bool), -1e9)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    assert float(only_pairs) == pytest.approx(float(-(log_prob[0, 1] + log_prob[1, 0]) / 2), rel=1e-5)


def test_augmenter_keeps_size_and_colour_identity():
    rng = np.random.default_rng(0)
    augment = Augmenter(32, rng)
    for colour in [(220, 30, 30), (30, 200, 40), (30, 40, 220)]:
        img = np.full((40, 40, 3), colour, np.uint8)
        for _ in range(10):
            out = augment(img)
            assert out.shape == (32, 32, 3) and out.dtype == np.uint8
            assert np.argmax(out.reshape(-1, 3).mean(0)) == int(np.argmax(colour)), "no hue jitter"


@pytest.mark.parametrize(
    "rgb, n_classes",
    [((128, 128, 128), 1), ((220, 30, 30), 4), ((220, 40, 120), 7), ((220, 220, 30), 4)],
    ids=["grey-one-class", "red-three-perms-and-grey", "pink-six-perms-and-grey", "yellow-three-perms-and-grey"],
)
def test_colour_classes_split_only_distinct_colours(rgb, n_classes):
    images = np.full((4, 16, 16, 3), rgb, np.uint8)
    class_type, class_transform = colour_classes(images, np.zeros(4, np.int64))
    assert len(class_type) == n_classes and np.all(class_type == 0)
    assert class_transform[0] == 0, "the original colours are always a class"
    assert (GREY in class_transform) == (n_classes > 1)
    colours = [recolour(images[0], int(t), np.ones((16, 16, 1), np.float32))[0, 0].astype(float) for t in class_transform]
    pairwise = [np.linalg.norm(a - b) for i, a in enumerate(colours) for b in colours[i + 1:]]
    assert all(d >= 40 for d in pairwise)


def test_recolour_changes_the_centre_and_keeps_the_border():
    image = np.zeros((40, 40, 3), np.uint8)
    image[..., 0] = 200  # red everywhere
    mask = centre_mask(40)
    out = recolour(image, CHANNEL_PERMUTATIONS.index((2, 1, 0)), mask)  # red -> blue
    assert tuple(out[20, 20]) == (0, 0, 200)
    assert tuple(out[0, 0]) == (200, 0, 0)
    grey = recolour(image, GREY, mask)
    assert grey[20, 20, 0] == grey[20, 20, 1] == grey[20, 20, 2] == round(0.299 * 200)
    assert recolour(image, 0, mask) is image


def test_batch_sampler_draws_p_types_k_crops():
    ids = np.repeat(np.arange(5), [3, 1, 4, 4, 4])
    sampler = BatchSampler(ids, 3, 2, np.random.default_rng(0))
    for _ in range(5):
        idx = sampler()
        assert idx.shape == (6,)
        assert len(np.unique(ids[idx])) == 3
        assert all(np.sum(ids[idx] == t) == 2 for t in np.unique(ids[idx]))


def test_tiny_training_run_checkpoints_resumes_and_exports(tmp_path):
    train, val = synthetic_set(4, seed=0), synthetic_set(3, seed=1)
    history = run_training(train, tmp_path / "run", EmbedderTrainConfig(**TINY), val=val, progress=False)
    assert [row[0] for row in history["losses"]] == [1, 2, 3]
    assert all(np.isfinite(row[1]) for row in history["losses"])
    assert history["val"] and 0 <= history["val"][-1][0] == 3
    assert (tmp_path / "run" / "last.pt").is_file()
    resumed = run_training(train, tmp_path / "run", EmbedderTrainConfig(**{**TINY, "steps": 5}), val=None, resume=True, progress=False)
    assert [row[0] for row in resumed["losses"]] == [1, 2, 3, 4, 5]
    path = export_weights(resumed["model"], tmp_path / "w" / "e.pt", {"input_size_px": 32, "recipe": "test"})
    assert {v.dtype for v in torch.load(path).values() if v.is_floating_point()} == {torch.float16}
    emb = Embedder.from_weights(path)
    assert emb.input_size_px == 32
    out = emb.embed(val.crops)
    assert out.shape == (len(val), 512)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)


def test_training_changes_the_weights(tmp_path):
    torch.manual_seed(0)
    history = run_training(synthetic_set(3), tmp_path, EmbedderTrainConfig(**{**TINY, "steps": 2, "eval_every": 0}), progress=False)

    torch.manual_seed(0)
    init = build_resnet18().state_dict()
    assert not torch.equal(history["model"]["conv1.weight"], init["conv1.weight"])


def test_training_needs_two_types(tmp_path):
    with pytest.raises(ValueError, match="two types"):
        run_training(synthetic_set(3, names=("red_disc",)), tmp_path, EmbedderTrainConfig(**TINY), progress=False)


def test_load_crop_folder_reads_types_in_order(tmp_path):
    write_folder(tmp_path, synthetic_set(2))
    loaded = load_crop_folder(tmp_path)
    assert loaded.type_names == sorted(TYPES)
    assert len(loaded) == 8 and loaded.crops[0].dtype == np.uint8 and loaded.crops[0].ndim == 3
    with pytest.raises(FileNotFoundError, match="no folder"):
        load_crop_folder(tmp_path, types=["nope"])


def _write_voc(root, rng):
    """Two photos with VOC boxes of two board types."""
    root.mkdir(parents=True)
    for n, objects in enumerate([[("red_disc", (11, 21, 60, 70))], [("blue_square", (31, 11, 90, 50)), ("red_disc", (1, 61, 40, 99))]]):
        img = rng.integers(0, 256, size=(100, 120, 3), dtype=np.uint8)
        cv2.imwrite(str(root / f"p{n}.jpg"), img)
        objs = "".join(f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                       for name, b in objects)
        (root / f"p{n}.xml").write_text(f"<annotation><filename>p{n}.jpg</filename>{objs}</annotation>")


def test_load_voc_crops(tmp_path):
    _write_voc(tmp_path / "voc", np.random.default_rng(0))
    crops = load_voc_crops(tmp_path / "voc", margin=0.0)
    assert crops.type_names == ["blue_square", "red_disc"]
    np.testing.assert_array_equal(crops.type_ids, [1, 0, 1])
    assert crops.crops[0].shape == (50, 50, 3)  # VOC (11, 21, 60, 70) 1-based inclusive -> 50 x 50 px


def test_cli_train_then_evaluate(tmp_path):
    write_folder(tmp_path / "train", synthetic_set(4, seed=0, names=("red_disc", "blue_square", "yellow_bar")))
    write_folder(tmp_path / "heldout", synthetic_set(5, seed=3, names=("green_disc", "blue_square", "yellow_bar")))
    _write_voc(tmp_path / "voc", np.random.default_rng(1))
    weights = tmp_path / "w" / "embedder.pt"
    runner = CliRunner()
    result = runner.invoke(train_embedder, ["--train-dir", str(tmp_path / "train"), "--out-dir", str(tmp_path / "run"),
                                            "--export", str(weights), "--steps", "2", "--input-size", "32",
                                            "--types-per-batch", "2", "--crops-per-type", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["seed"] == 0 and sidecar["input_size_px"] == 32
    assert sidecar["data"]["types"] == ["blue_square", "red_disc", "yellow_bar"]
    result = runner.invoke(evaluate_embedder, ["--weights", str(weights), "--heldout-dir", str(tmp_path / "heldout"),
                                               "--real-dir", str(tmp_path / "voc"), "--n-groupings", "5", "--crops-per-type", "3",
                                               "--out", str(tmp_path / "eval.json"), "--update-sidecar", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "ARI mean" in result.output and "ms per crop" in result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["protocol"]["n_groupings"] == 5
    assert -1 <= report["sim_heldout"]["ari_mean"] <= 1 and report["real_microcontrollers"]["n_crops"] == 3
    assert report["speed"]["ms_per_crop_median"] > 0
    assert json.loads(weights.with_suffix(".json").read_text())["metrics"]["sim_heldout"] == report["sim_heldout"]


def test_cli_train_refuses_heldout_types(tmp_path):
    pytest.importorskip("sorterbot_cloud.sim.catalog")
    from sorterbot_cloud.sim.catalog import HELDOUT_ITEM_TYPES

    crop_set = synthetic_set(2, names=("red_disc", "blue_square"))
    crop_set.type_names = ["red_disc", HELDOUT_ITEM_TYPES[0]]
    write_folder(tmp_path / "train", crop_set)
    result = CliRunner().invoke(train_embedder, ["--train-dir", str(tmp_path / "train"), "--out-dir", str(tmp_path / "run"),
                                                 "--export", str(tmp_path / "e.pt"), "--steps", "1"])
    assert result.exit_code != 0 and "held-out" in result.output


def test_time_budget_stops_training_and_checkpoints(tmp_path):
    cfg = EmbedderTrainConfig(**{**TINY, "steps": 1000, "eval_every": 0, "checkpoint_every": 1000, "time_budget_s": 1e-3})
    history = run_training(synthetic_set(3), tmp_path, cfg, progress=False)
    assert 1 <= history["steps_done"] < 1000
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == history["steps_done"]


def test_the_embedder_follows_the_shared_schedule():
    from sorterbot_cloud import schedule
    from sorterbot_cloud.embedding.training import lr_factor

    cfg = EmbedderTrainConfig(steps=6, warmup_steps=2, time_budget_s=100.0)
    assert lr_factor(0, 0.0, cfg) == pytest.approx(schedule.FLOOR)
    assert lr_factor(2, 0.0, cfg) == pytest.approx(schedule.lr_factor(2, 2 / 6, 2))
    assert lr_factor(2, 90.0, cfg) == pytest.approx(schedule.lr_factor(2, 0.9, 2))  # the budget is further along


def test_init_from_starts_at_the_given_model(tmp_path):
    train = synthetic_set(3)
    first = run_training(train, tmp_path / "a", EmbedderTrainConfig(**{**TINY, "steps": 2, "eval_every": 0}), progress=False)
    cfg = EmbedderTrainConfig(**{**TINY, "steps": 1, "eval_every": 0, "lr": 0.0, "weight_decay": 0.0, "init_from": str(tmp_path / "a" / "last.pt")})
    second = run_training(train, tmp_path / "b", cfg, progress=False)
    assert torch.equal(second["model"]["conv1.weight"], first["model"]["conv1.weight"])


def test_foreground_masks_find_the_item_and_swap_background():
    rng = np.random.default_rng(0)
    crop = np.full((60, 60, 3), (150, 150, 150), np.uint8) + rng.integers(0, 10, size=(60, 60, 3), dtype=np.uint8)
    cv2.circle(crop, (30, 30), 24, (220, 30, 30), -1)  # the item fills the box inside the 0.1 margin
    (mask,) = foreground_masks([crop], 60, margin=0.1)
    assert mask.shape == (60, 60, 1) and mask.dtype == np.float32
    assert mask[30, 30, 0] > 0.9 and mask[2, 2, 0] < 0.1
    background = np.zeros((60, 60, 3), np.uint8)
    out = swap_background(letterbox(crop, 60), mask, background)
    assert tuple(out[30, 30]) == tuple(letterbox(crop, 60)[30, 30])
    assert tuple(out[2, 2]) == (0, 0, 0)


def test_training_with_background_swap_runs(tmp_path):
    cfg = EmbedderTrainConfig(**{**TINY, "steps": 2, "eval_every": 0, "background_swap": 1.0})
    history = run_training(synthetic_set(3), tmp_path, cfg, progress=False)
    assert history["steps_done"] == 2 and all(np.isfinite(r[1]) for r in history["losses"])


def _typed_coco(root, name, boxes):
    """A COCO file with one 200x100 grey image holding one solid-colour rectangle per box.

    ``boxes``: (x, y, w, h, rgb, type, category_id, visible_fraction) tuples.
    """
    image = np.full((100, 200, 3), 90, np.uint8)
    annotations = []
    for i, (x, y, w, h, rgb, kind, cat, visible) in enumerate(boxes):
        image[y:y + h, x:x + w] = rgb
        annotations.append({"id": i + 1, "image_id": 1, "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
                            "iscrowd": 0, "type": kind, "visible_fraction": visible})
    cv2.imwrite(str(root / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    coco = {"images": [{"id": 1, "file_name": f"{name}.png", "width": 200, "height": 100}], "annotations": annotations,
            "categories": [{"id": 1, "name": "item"}, {"id": 2, "name": "container"}]}
    path = root / f"{name}.json"
    path.write_text(json.dumps(coco))
    return path


def test_crops_from_coco_cuts_typed_items_and_skips_the_rest(tmp_path):
    from sorterbot_cloud.embedding.data import export_crops_from_coco

    path = _typed_coco(tmp_path, "a", [
        (10, 10, 30, 20, (255, 0, 0), "ball", 1, 1.0),
        (60, 10, 20, 30, (0, 0, 255), "coin", 1, 0.97),
        (100, 10, 20, 20, (0, 255, 0), "coin", 1, 0.5),      # mostly hidden: skipped
        (130, 10, 60, 60, (255, 255, 0), "bowl", 2, 1.0),    # a container: skipped
        (10, 60, 8, 30, (0, 255, 255), "ball", 1, 1.0),      # narrower than min_side_px: skipped
        (40, 60, 20, 20, (255, 0, 255), "washer", 1, 1.0),   # excluded type
    ])
    counts = export_crops_from_coco(path, tmp_path, tmp_path / "crops", exclude_types=("washer",))
    assert counts == {"ball": 1, "coin": 1}
    crops = load_crop_folder(tmp_path / "crops")
    assert crops.type_names == ["ball", "coin"]
    ball, coin = crops.crops
    assert ball.shape == (24, 36, 3) and coin.shape == (36, 24, 3)  # box plus a 10 % margin on each side
    assert tuple(ball[12, 18]) == (255, 0, 0) and tuple(coin[18, 12]) == (0, 0, 255)
    index = json.loads((tmp_path / "crops" / "index.json").read_text())
    assert [c["path"] for c in index["crops"]] == ["ball/0.png", "coin/0.png"]

    with pytest.raises(ValueError, match="no category 'box'"):
        export_crops_from_coco(path, tmp_path, tmp_path / "other", category_name="box")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_crops_from_coco(path, tmp_path / "nowhere", tmp_path / "other")


def test_crops_from_coco_cli_numbers_across_datasets_and_caps_per_type(tmp_path):
    from sorterbot_cloud.embedding.cli import crops_from_coco

    a = _typed_coco(tmp_path, "a", [(10, 10, 30, 20, (255, 0, 0), "ball", 1, 1.0), (60, 10, 20, 30, (0, 0, 255), "ball", 1, 1.0)])
    b = _typed_coco(tmp_path, "b", [(10, 10, 30, 20, (255, 0, 0), "ball", 1, 1.0), (60, 10, 20, 30, (0, 0, 255), "cork", 1, 1.0)])
    result = CliRunner().invoke(crops_from_coco, ["--dataset", f"{a}:{tmp_path}", "--dataset", f"{b}:{tmp_path}",
                                                  "--out", str(tmp_path / "crops"), "--max-per-type", "2"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "crops" / "ball").iterdir()) == ["0.png", "1.png"]  # b's ball is over the cap
    assert [p.name for p in (tmp_path / "crops" / "cork").iterdir()] == ["0.png"]
    index = json.loads((tmp_path / "crops" / "index.json").read_text())
    assert len(index["crops"]) == 3 and {c["source"] for c in index["crops"]} == {str(a), str(b)}
    assert index["sources"] == sorted([str(a), str(b)])

    bad = CliRunner().invoke(crops_from_coco, ["--dataset", "no-colon", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "ANNOTATIONS.json:IMAGES_DIR" in bad.output


def test_cli_calibrate_grouping_writes_the_best_distance(tmp_path):
    from sorterbot_cloud.embedding.cli import calibrate_grouping

    write_folder(tmp_path / "a", synthetic_set(4, seed=5, names=("green_disc", "blue_square", "yellow_bar")))
    torch.manual_seed(0)
    weights = export_weights(build_resnet18().state_dict(), tmp_path / "w" / "e.pt", {"input_size_px": 32})
    runner = CliRunner()
    result = runner.invoke(calibrate_grouping, ["--weights", str(weights), "--crops-dir", str(tmp_path / "a"), "--distances", "0.05,0.5",
                                                "--n-trials", "10", "--out", str(tmp_path / "cal.json"), "--update-sidecar"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cal.json").read_text())
    assert set(report["mean"]) == {"gap", "d=0.05", "d=0.5", "oracle_k"}
    best = report["best_distance"]
    assert report["mean"][f"d={best:g}"] == max(report["mean"]["d=0.05"], report["mean"]["d=0.5"])
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["group_cosine_distance"] == best and Embedder.from_weights(weights).group_distance == best
    bad = runner.invoke(calibrate_grouping, ["--weights", str(weights), "--crops-dir", str(tmp_path / "a"), "--distances", "0,3"])
    assert bad.exit_code == 2 and "cosine distances" in bad.output


def test_class_draw_weights_give_each_prefix_group_its_share():
    names = ["mc_nano", "mc_pi", "card_ace", "ball", "mc_x_long", "cube"]
    p = class_draw_weights(names, {"mc_": 0.4, "mc_x": 0.1, "card_": 0.2})
    np.testing.assert_allclose(p, [0.2, 0.2, 0.2, 0.15, 0.1, 0.15])
    assert class_draw_weights(names, {}) is None
    with pytest.raises(ValueError, match="matches no training type"):
        class_draw_weights(names, {"food_": 0.2})
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        class_draw_weights(names, {"mc_": 1.5})
    with pytest.raises(ValueError, match="leaving nothing"):
        class_draw_weights(names, {"mc_": 0.6, "card_": 0.5})


def test_weighted_batches_draw_heavy_types_more_often_and_never_zero_weight_ones():
    type_ids = np.repeat(np.arange(10), 5)
    weights = np.ones(10)
    weights[:2] = 8.0
    weights[9] = 0.0
    sampler = BatchSampler(type_ids, 3, 1, np.random.default_rng(0), weights)
    drawn = np.concatenate([type_ids[sampler()] for _ in range(2000)])
    share = np.bincount(drawn, minlength=10) / len(drawn)
    assert share[9] == 0.0
    assert share[0] > 2.0 * share[5] and share[1] > 2.0 * share[5]
    uniform = BatchSampler(type_ids, 3, 1, np.random.default_rng(0))
    drawn = np.concatenate([type_ids[uniform()] for _ in range(2000)])
    assert np.bincount(drawn, minlength=10).min() > 0.07 * len(drawn)
    with pytest.raises(ValueError, match="type_weights must be"):
        BatchSampler(type_ids, 3, 1, np.random.default_rng(0), np.ones(4))
