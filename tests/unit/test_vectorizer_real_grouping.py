"""Grouping of labelled real photos: the VOC reader and per-photo scoring with the service's own group count."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sorterbot_cloud.embedding.data import export_crops_from_voc, load_crop_folder, voc_photo_fold, voc_photos
from sorterbot_cloud.embedding.evaluation import photo_grouping


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_well_separated_kinds_are_grouped_and_counted_right():
    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0], np.eye(8)[1]
    emb = _unit(np.stack([a, a, b, b]) + rng.normal(0, 0.01, (4, 8)))
    out = photo_grouping([emb], [np.array([0, 0, 1, 1])], group_distance=0.2)
    assert out["photos"] == 1 and out["k_exact"] == 1.0 and out["ari_own_k_mean"] == 1.0
    assert out["ari_true_k_mean"] == 1.0 and out["sorted_share"] == 1.0


def test_kinds_closer_than_the_distance_are_merged_and_scored_as_too_few():
    a = np.eye(8)[0]
    close = _unit(np.stack([a, a, a + 0.05 * np.eye(8)[1], a + 0.05 * np.eye(8)[1]]))
    out = photo_grouping([close], [np.array([0, 0, 1, 1])], group_distance=0.2)
    assert out["k_too_few"] == 1.0 and out["k_exact"] == 0.0 and out["ari_own_k_mean"] == 0.0
    assert out["ari_true_k_mean"] == 1.0, "told the true number, K-Means still splits them"


def test_photos_with_one_item_are_skipped():
    assert photo_grouping([_unit(np.eye(4)[:1])], [np.array([0])], group_distance=0.2) == {"photos": 0}


def test_voc_photos_reads_boxes_zero_based_and_skips_missing_images(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><object><name> nano </name>"
        "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object></annotation>")
    (tmp_path / "b.xml").write_text("<annotation><filename>b.jpg</filename></annotation>")
    photos = list(voc_photos(tmp_path))
    assert len(photos) == 1
    path, boxes, names = photos[0]
    assert path.name == "a.jpg" and names == ["nano"]
    np.testing.assert_array_equal(boxes, [[0, 1, 10, 12]])


def _voc_folder(root, n_photos):
    """n_photos labelled photos: photo i has one box of kind 'k<i % 2>', coloured by its index."""
    root.mkdir()
    for i in range(n_photos):
        cv2.imwrite(str(root / f"p{i}.jpg"), np.full((40, 40, 3), 10 * i, np.uint8))
        (root / f"p{i}.xml").write_text(
            f"<annotation><filename>p{i}.jpg</filename><object><name>k{i % 2}</name>"
            "<bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object></annotation>")
    (root / "empty.xml").write_text("<annotation><filename>p0.jpg</filename></annotation>")


def test_photo_folds_are_complementary_and_cover_every_labelled_photo(tmp_path):
    _voc_folder(tmp_path / "voc", 7)
    names = lambda photos: sorted(p[0].name for p in photos)  # noqa: E731
    every = names(voc_photo_fold(tmp_path / "voc"))
    assert every == sorted(f"p{i}.jpg" for i in range(7)), "the photo without boxes is not one"
    tests = [names(voc_photo_fold(tmp_path / "voc", 3, f, "test", seed=4)) for f in range(3)]
    assert sorted(sum(tests, [])) == every
    for f in range(3):
        train = names(voc_photo_fold(tmp_path / "voc", 3, f, "train", seed=4))
        assert not set(train) & set(tests[f]) and sorted(train + tests[f]) == every
    with pytest.raises(ValueError, match="fold must be in 0..2"):
        voc_photo_fold(tmp_path / "voc", 3, 3)
    with pytest.raises(ValueError, match="part must be"):
        voc_photo_fold(tmp_path / "voc", 3, 0, "val")


def test_export_crops_from_voc_writes_one_folder_per_kind_with_the_prefix(tmp_path):
    _voc_folder(tmp_path / "voc", 4)
    counts = export_crops_from_voc(voc_photo_fold(tmp_path / "voc"), tmp_path / "crops", prefix="set_")
    assert counts == {"set_k0": 2, "set_k1": 2}
    crops = load_crop_folder(tmp_path / "crops")
    assert sorted(crops.type_names) == ["set_k0", "set_k1"] and len(crops) == 4
    index = json.loads((tmp_path / "crops" / "index.json").read_text())["crops"]
    assert {Path(e["photo"]).name for e in index} == {"p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"}
    # the crop is the photo's own pixels: photo 3 is grey level 30
    entry = next(e for e in index if Path(e["photo"]).name == "p3.jpg")
    assert int(np.median(cv2.imread(str(tmp_path / "crops" / entry["crop"])))) == 30


def test_crops_from_voc_cli_leaves_the_scored_fold_out(tmp_path):
    from click.testing import CliRunner

    from sorterbot_cloud.embedding.cli import crops_from_voc

    _voc_folder(tmp_path / "voc", 6)
    result = CliRunner().invoke(crops_from_voc, ["--voc", str(tmp_path / "voc"), "--out", str(tmp_path / "crops"),
                                                 "--folds", "3", "--fold", "1"])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "crops" / "index.json").read_text())["crops"]
    held_out = {p[0].name for p in voc_photo_fold(tmp_path / "voc", 3, 1, "test")}
    assert len(index) == 4 and not {Path(e["photo"]).name for e in index} & held_out
    left_out = CliRunner().invoke(crops_from_voc, ["--voc", str(tmp_path / "voc"), "--out", str(tmp_path / "held"),
                                                   "--folds", "3", "--fold", "1", "--part", "test"])
    assert left_out.exit_code == 0, left_out.output
    index = json.loads((tmp_path / "held" / "index.json").read_text())["crops"]
    assert {Path(e["photo"]).name for e in index} == held_out
    bad = CliRunner().invoke(crops_from_voc, ["--voc", str(tmp_path / "voc"), "--out", str(tmp_path / "c2"), "--folds", "9"])
    assert bad.exit_code == 2 and "2 <= folds <= items" in bad.output


def test_evaluate_real_grouping_scores_only_the_left_out_fold(tmp_path):
    from click.testing import CliRunner

    from sorterbot_cloud.embedding.cli import evaluate_real_grouping

    _voc_folder(tmp_path / "voc", 6)
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(evaluate_real_grouping, ["--voc", str(tmp_path / "voc"), "--folds", "3", "--fold", "2",
                                                         "--seed", "5", "--threads", "1", "--group-distance", "0.1",
                                                         "--group-distance", "1.9", "--out", str(out)])
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())
    entry = scores["sets"][str(tmp_path / "voc")]
    assert scores["split"] == {"folds": 3, "fold": 2, "seed": 5}
    assert entry["n_photos"] == len(voc_photo_fold(tmp_path / "voc", 3, 2, "test", seed=5)) == 2
    assert sorted(entry["per_photo_at_distance"]) == ["0.1", "1.9"]
