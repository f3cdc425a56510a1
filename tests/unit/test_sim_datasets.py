"""COCO and item-crop exports."""

from __future__ import annotations

import json

import pytest
from pycocotools.coco import COCO

from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.sim.catalog import HELDOUT_ITEM_TYPES, TRAIN_ITEM_TYPES
from sorterbot_cloud.sim.datasets import export_coco_dataset, export_item_crops
from sorterbot_cloud.sim.textures import TRAIN_TEXTURES


@pytest.fixture(scope="module")
def coco_path(tmp_path_factory):
    return export_coco_dataset(tmp_path_factory.mktemp("coco"), 5, seed=3, width_px=256, height_px=192, frames_per_scene=2, progress=False)


def test_coco_export_loads_with_pycocotools(coco_path):
    coco = COCO(str(coco_path))
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4, 5]
    assert {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())} == {"item": 1, "container": 2}
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) > 0
    assert {a["category_id"] for a in anns} <= {1, 2}
    for ann in anns:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 256.01 and y + h <= 192.01
        assert ann["area"] == pytest.approx(w * h, rel=1e-3)
        if ann["category_id"] == 1:
            assert ann["type"] in TRAIN_ITEM_TYPES
    for img in coco.loadImgs(coco.getImgIds()):
        assert (coco_path.parent / "images" / img["file_name"]).exists()
        assert 1000 <= img["pw0"] <= 1950


def test_coco_export_is_deterministic(coco_path, tmp_path):
    again = export_coco_dataset(tmp_path, 5, seed=3, width_px=256, height_px=192, frames_per_scene=2, progress=False)
    assert json.loads(again.read_text()) == json.loads(coco_path.read_text())
    assert (tmp_path / "images" / "000004.jpg").read_bytes() == (coco_path.parent / "images" / "000004.jpg").read_bytes()


def test_heldout_coco_split_only_has_heldout_types(tmp_path):
    path = export_coco_dataset(tmp_path, 2, seed=4, split="heldout", width_px=256, height_px=192, progress=False)
    anns = json.loads(path.read_text())["annotations"]
    assert {a["type"] for a in anns if a["category_id"] == 1} <= set(HELDOUT_ITEM_TYPES)


def test_coco_export_draws_procedural_types_beside_the_split(tmp_path):
    procedural = [f"proc_{i:04d}" for i in range(40)]
    path = export_coco_dataset(tmp_path, 2, seed=4, split="train", width_px=256, height_px=192, items_range=(6, 6),
                               procedural_types=procedural, progress=False)
    types = {a["type"] for a in json.loads(path.read_text())["annotations"] if a["category_id"] == 1}
    # 50 equally likely types, 6 items a scene: procedural ones are drawn, held-out ones never
    assert types & set(procedural)
    assert types <= set(procedural) | set(TRAIN_ITEM_TYPES)


def test_coco_export_draws_extra_training_textures(tmp_path):
    mixed = export_coco_dataset(tmp_path / "mixed", 24, seed=4, width_px=128, height_px=96, frames_per_scene=1,
                                extra_textures=["laminate"], progress=False)
    only = export_coco_dataset(tmp_path / "only", 3, seed=4, width_px=128, height_px=96, frames_per_scene=1,
                               extra_textures=["laminate"], split_textures=False, progress=False)
    mixed_textures = {i["texture"] for i in json.loads(mixed.read_text())["images"]}
    # 7 equally likely tables over 24 scenes: the extra one and the split's are both drawn
    assert "laminate" in mixed_textures and mixed_textures - {"laminate"} and mixed_textures <= set(TRAIN_TEXTURES) | {"laminate"}
    assert {i["texture"] for i in json.loads(only.read_text())["images"]} == {"laminate"}


@pytest.mark.parametrize("kwargs", [
    {"extra_textures": ["marble_stone"]},
    {"extra_textures": ["laminate"], "split": "heldout"},
    {"split_textures": False},
], ids=["heldout-texture", "heldout-split", "no-table"])
def test_coco_export_refuses_extra_textures_that_would_leak_or_leave_no_table(tmp_path, kwargs):
    with pytest.raises(BadRequest, match="extra_textures"):
        export_coco_dataset(tmp_path, 1, 0, progress=False, **kwargs)


def test_coco_export_rejects_a_catalogue_type_as_procedural(tmp_path):
    with pytest.raises(BadRequest, match="procedural type names"):
        export_coco_dataset(tmp_path, 1, 0, procedural_types=["die"], progress=False)


def test_item_crops_are_deterministic_and_per_type(tmp_path):
    types = ["coin", "die"]
    first = export_item_crops(tmp_path / "a", 2, seed=5, types=types, width_px=640, height_px=480, progress=False)
    second = export_item_crops(tmp_path / "b", 2, seed=5, types=types, width_px=640, height_px=480, progress=False)
    index = json.loads(first.read_text())
    assert index == json.loads(second.read_text())
    assert sorted(c["path"] for c in index["crops"]) == ["coin/0.png", "coin/1.png", "die/0.png", "die/1.png"]
    assert {c["split"] for c in index["crops"] if c["type"] == "die"} == {"heldout"}
    for crop in index["crops"]:
        assert (tmp_path / "a" / crop["path"]).read_bytes() == (tmp_path / "b" / crop["path"]).read_bytes()


def test_item_crops_draw_another_scene_when_one_cannot_be_laid_out(tmp_path, monkeypatch):
    """A scene whose items do not fit on the table is skipped, not fatal; endless failure still raises."""
    from sorterbot_cloud.sim import datasets

    real, calls = datasets.generate_scene, []

    def fails_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise BadRequest("could not place item 'coin' without overlap (fake failure)")
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "generate_scene", fails_first)
    index = json.loads(export_item_crops(tmp_path / "a", 1, seed=5, types=["coin"], width_px=640, height_px=480,
                                         progress=False).read_text())
    assert [c["path"] for c in index["crops"]] == ["coin/0.png"]
    assert index["crops"][0]["scene"] >= 1 and len(calls) >= 2

    def always_fails(*args, **kwargs):
        raise BadRequest("could not place (fake failure)")

    monkeypatch.setattr(datasets, "generate_scene", always_fails)
    monkeypatch.setattr(datasets, "MAX_SKIPPED_CROP_SCENES", 3)
    with pytest.raises(BadRequest, match="fake failure"):
        export_item_crops(tmp_path / "b", 1, seed=5, types=["coin"], width_px=640, height_px=480, progress=False)


@pytest.mark.parametrize("call,match", [
    (lambda out: export_coco_dataset(out, 1, 0, split="test", progress=False), "unknown split"),
    (lambda out: export_item_crops(out, 1, 0, types=["spoon"], progress=False), "unknown item type"),
    (lambda out: export_item_crops(out, 0, 0, types=["coin"], progress=False), "n_per_type"),
], ids=["split", "crop-type", "crop-count"])
def test_bad_dataset_requests_raise(tmp_path, call, match):
    with pytest.raises(BadRequest, match=match):
        call(tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    ({"items_range": (3, 2)}, "items_range"),
    ({"containers_range": (-1, 2)}, "containers_range"),
], ids=["inverted", "negative"])
def test_bad_count_ranges_raise(tmp_path, kwargs, match):
    with pytest.raises(BadRequest, match=match):
        export_coco_dataset(tmp_path, 1, 0, progress=False, **kwargs)


def test_scenes_that_cannot_be_laid_out_are_skipped_or_refused(tmp_path):
    # 4 containers and 10 items fail to lay out on many draws: the export takes the next
    # scene seed instead of stopping, and still writes the frames asked for
    path = export_coco_dataset(tmp_path / "crowded", 3, seed=12000, width_px=128, height_px=96, frames_per_scene=1,
                               items_range=(10, 10), containers_range=(4, 4), progress=False)
    coco = json.loads(path.read_text())
    assert len(coco["images"]) == 3
    # scene ids are the indices of the scene seeds: a skipped draw leaves a hole
    assert [image["scene"] for image in coco["images"]] != [0, 1, 2]
    counts = [sum(a["category_id"] == 2 and a["image_id"] == im["id"] for a in coco["annotations"]) for im in coco["images"]]
    assert max(counts) <= 4
    with pytest.raises(BadRequest, match="could not be laid out"):
        export_coco_dataset(tmp_path / "impossible", 1, seed=0, width_px=128, height_px=96, items_range=(60, 60),
                            containers_range=(4, 4), progress=False)


def test_cli_dataset_distractors_reach_the_scenes(tmp_path):
    # the same seed with and without distractors: the frames differ (distractors are drawn
    # in the scene, never boxed), and an inverted range is refused by name
    from click.testing import CliRunner

    from sorterbot_cloud.sim.cli import simulate

    runner = CliRunner()
    images = {}
    for n in (0, 4):
        out = tmp_path / f"d{n}"
        result = runner.invoke(simulate, ["dataset", "--out", str(out), "--images", "1", "--seed", "7", "--width", "160", "--height", "120",
                                          "--frames-per-scene", "1", "--items", "1", "1", "--containers", "0", "0", "--distractors", str(n), str(n)])
        assert result.exit_code == 0, result.output
        coco = json.loads((out / "annotations.json").read_text())
        assert {a["category_id"] for a in coco["annotations"]} <= {1}  # distractors are never annotated
        images[n] = (out / "images" / coco["images"][0]["file_name"]).read_bytes()
    assert images[0] != images[4]
    result = runner.invoke(simulate, ["dataset", "--out", str(tmp_path / "bad"), "--images", "1", "--distractors", "3", "1"])
    assert result.exit_code != 0 and "distractors_range" in (result.output + repr(result.exception))


def test_table_markings_change_only_the_table(tmp_path):
    # the same seed with and without markings: the same objects and boxes (markings have a
    # generator of their own and are never annotated), other pixels; (0, 0) is the default
    plain = export_coco_dataset(tmp_path / "plain", 2, seed=11, width_px=200, height_px=150, frames_per_scene=2, progress=False)
    zero = export_coco_dataset(tmp_path / "zero", 2, seed=11, width_px=200, height_px=150, frames_per_scene=2, progress=False,
                               markings_range=(0, 0))
    marked = export_coco_dataset(tmp_path / "marked", 2, seed=11, width_px=200, height_px=150, frames_per_scene=2, progress=False,
                                 markings_range=(150, 150))
    ann = {name: json.loads(p.read_text()) for name, p in (("plain", plain), ("zero", zero), ("marked", marked))}
    boxes = {name: [(a["image_id"], a["category_id"], a["bbox"]) for a in d["annotations"]] for name, d in ann.items()}
    assert boxes["plain"] == boxes["zero"] == boxes["marked"]
    first = ann["plain"]["images"][0]["file_name"]
    read = lambda name: (tmp_path / name / "images" / first).read_bytes()  # noqa: E731
    assert read("plain") == read("zero") and read("plain") != read("marked")
    with pytest.raises(BadRequest, match="markings_range"):
        export_coco_dataset(tmp_path / "bad", 1, 0, progress=False, markings_range=(2, 1))
