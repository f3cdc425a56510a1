"""Grouping of labelled real photos: the VOC reader and per-photo scoring with the service's own group count."""

from __future__ import annotations

import cv2
import numpy as np

from vectorizer.data import voc_photos
from vectorizer.evaluation import photo_grouping


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
