"""Scenes: catalogue split, sizes, non-overlap and reach."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.sim.catalog import CONTAINER_TYPES, HELDOUT_ITEM_TYPES, ITEM_TYPES, TRAIN_ITEM_TYPES
from sorterbot_cloud.sim.scene import (
    ITEM_R_RANGE_MM,
    THETA_RANGE_DEG,
    build_object,
    choose_item_types,
    generate_scene,
    in_shadow,
)
from sorterbot_cloud.sim.textures import (
    EXTRA_TRAIN_TEXTURES,
    HELDOUT_TEXTURES,
    TEXTURES,
    TRAIN_TEXTURES,
    make_texture,
    paint_table_markings,
)


def test_item_split_is_fixed_disjoint_and_large_enough():
    assert len(TRAIN_ITEM_TYPES) >= 8 and len(HELDOUT_ITEM_TYPES) >= 4
    assert not set(TRAIN_ITEM_TYPES) & set(HELDOUT_ITEM_TYPES)
    assert set(TRAIN_ITEM_TYPES) | set(HELDOUT_ITEM_TYPES) == set(ITEM_TYPES)
    assert len(CONTAINER_TYPES) >= 3
    assert not set(TRAIN_TEXTURES) & set(HELDOUT_TEXTURES) and not set(EXTRA_TRAIN_TEXTURES) & (set(TRAIN_TEXTURES) | set(HELDOUT_TEXTURES))
    assert set(TRAIN_TEXTURES) | set(HELDOUT_TEXTURES) | set(EXTRA_TRAIN_TEXTURES) == set(TEXTURES)


@pytest.mark.parametrize("name", sorted(ITEM_TYPES), ids=sorted(ITEM_TYPES))
def test_item_types_are_15_to_60_mm_across(name):
    rng = np.random.default_rng(0)
    for _ in range(3):
        mesh, _, height = build_object(name, rng)
        pts = np.asarray(mesh.points)
        extent = np.ptp(pts, axis=0)
        assert 15.0 <= max(extent) <= 60.0, extent
        assert pts[:, 2].min() == pytest.approx(0.0, abs=0.05)  # rests on the table
        assert mesh.point_data["rgb"].dtype == np.uint8


@pytest.mark.parametrize("name", sorted(CONTAINER_TYPES), ids=sorted(CONTAINER_TYPES))
def test_container_types_are_100_to_220_mm_across(name):
    rng = np.random.default_rng(1)
    for _ in range(5):
        mesh, _, _ = build_object(name, rng)
        extent = np.ptp(np.asarray(mesh.points), axis=0)
        assert 100.0 <= max(extent[:2]) <= 220.0, extent


def test_item_types_differ_in_mean_colour():
    rng = np.random.default_rng(2)
    means = {name: build_object(name, rng)[0].point_data["rgb"].reshape(-1, 3).mean(axis=0) for name in ITEM_TYPES}
    for a, b in itertools.combinations(means, 2):
        # shape differs too, but colour alone already separates most pairs: at least 15 levels apart
        same_shape_family = {a, b} <= {"die", "eraser"} or {a, b} <= {"hex_nut", "washer"}
        if not same_shape_family:
            assert np.abs(means[a] - means[b]).max() > 15, (a, b)


@pytest.mark.parametrize("seed", range(6), ids=[f"seed{s}" for s in range(6)])
def test_scene_objects_do_not_overlap_and_are_within_reach(seed):
    rng = np.random.default_rng(seed)
    types = choose_item_types(rng, 8, 4, TRAIN_ITEM_TYPES)
    scene = generate_scene(rng, types, n_containers=int(rng.integers(1, 5)), n_distractors=2)
    placed = scene.objects + scene.distractors
    for a, b in itertools.combinations(placed, 2):
        gap = np.hypot(a.x_mm - b.x_mm, a.y_mm - b.y_mm) - a.footprint_radius_mm - b.footprint_radius_mm
        assert gap > 0, (a.type, b.type, gap)
        # the footprint radius bounds the real mesh: no point of one lies inside the other's disc
        pts = np.asarray(a.mesh.points)
        assert np.hypot(pts[:, 0] - b.x_mm, pts[:, 1] - b.y_mm).min() > b.footprint_radius_mm
    for item in scene.items:
        assert ITEM_R_RANGE_MM[0] <= item.r_mm <= ITEM_R_RANGE_MM[1]
        assert THETA_RANGE_DEG[0] <= item.theta_deg <= THETA_RANGE_DEG[1]
    assert sorted(o.type for o in scene.items) == sorted(types)


def test_choose_item_types_uses_every_chosen_type():
    rng = np.random.default_rng(3)
    types = choose_item_types(rng, 7, 4, HELDOUT_ITEM_TYPES)
    assert len(types) == 7 and len(set(types)) == 4 and set(types) <= set(HELDOUT_ITEM_TYPES)


@pytest.mark.parametrize("call,match", [
    (lambda rng: generate_scene(rng, ["spoon"], 1), "unknown item type"),
    (lambda rng: generate_scene(rng, ["coin"], 1, container_types=["bucket"]), "unknown container type"),
    (lambda rng: generate_scene(rng, ["coin"], 1, textures=["lava"]), "unknown texture"),
    (lambda rng: generate_scene(rng, ["coin"] * 80, 4), "could not place"),
    (lambda rng: choose_item_types(rng, 3, 4, TRAIN_ITEM_TYPES), "n_item_types"),
    (lambda rng: make_texture("lava", rng, 32), "unknown texture"),
], ids=["item-type", "container-type", "texture", "overcrowded", "types-over-items", "make-texture"])
def test_bad_scene_requests_raise(call, match):
    with pytest.raises(BadRequest, match=match):
        call(np.random.default_rng(0))


@pytest.mark.parametrize("name", sorted(TEXTURES), ids=sorted(TEXTURES))
def test_textures_are_seeded_rgb_images(name):
    a = make_texture(name, np.random.default_rng(5), 128)
    b = make_texture(name, np.random.default_rng(5), 128)
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert a.std() > 2.0  # a texture, not a flat colour


def test_table_markings_are_seeded_local_marks():
    table = np.full((400, 400, 3), 180, np.uint8)
    a = paint_table_markings(table, np.random.default_rng(3), 12, px_per_mm=1.0)
    b = paint_table_markings(table, np.random.default_rng(3), 12, px_per_mm=1.0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == table.shape and a.dtype == np.uint8
    assert (table == 180).all()  # the input is not modified
    changed = np.abs(a.astype(int) - 180).max(axis=2) > 3
    assert 0.005 < changed.mean() < 0.6  # marks, not a repaint of the whole table
    np.testing.assert_array_equal(paint_table_markings(table, np.random.default_rng(3), 0, px_per_mm=1.0), table)
    # marks are 10..70 mm across: at 1 px/mm a single mark stays within a 70 px (+ line and blur) window
    one = np.abs(paint_table_markings(table, np.random.default_rng(8), 1, px_per_mm=1.0).astype(int) - 180).max(axis=2) > 3
    ys, xs = np.nonzero(one)
    assert len(ys) > 0 and np.ptp(ys) <= 90 and np.ptp(xs) <= 90


@pytest.mark.parametrize("texture, n, px_per_mm, match", [
    (np.zeros((8, 8), np.uint8), 1, 1.0, "texture must be"),
    (np.zeros((8, 8, 3), np.float32), 1, 1.0, "texture must be"),
    (np.zeros((8, 8, 3), np.uint8), -1, 1.0, "n_markings"),
    (np.zeros((8, 8, 3), np.uint8), 1, 0.0, "px_per_mm"),
], ids=["grey", "float", "negative-count", "zero-scale"])
def test_bad_table_markings_raise(texture, n, px_per_mm, match):
    with pytest.raises(BadRequest, match=match):
        paint_table_markings(texture, np.random.default_rng(0), n, px_per_mm)


@pytest.mark.parametrize("x, y, radius, expected", [
    (400.0, 0.0, 15.0, True),     # straight behind the container
    (400.0, 70.0, 15.0, True),    # behind, within the container's radius of the ray
    (400.0, 110.0, 15.0, False),  # off to the side
    (200.0, 0.0, 15.0, False),    # in front of it
])
def test_in_shadow_of_a_container(x, y, radius, expected):
    assert in_shadow(x, y, radius, [(300.0, 0.0, 80.0)]) is expected


def test_items_are_never_placed_in_a_container_shadow():
    for seed in range(30):
        rng = np.random.default_rng(seed)
        try:
            scene = generate_scene(rng, ["coin", "die", "cube", "button", "cork", "ball"], 4)
        except BadRequest:
            continue
        containers = [(o.x_mm, o.y_mm, o.footprint_radius_mm) for o in scene.objects if o.cls == "container"]
        for o in scene.objects:
            if o.cls == "item":
                assert not in_shadow(o.x_mm, o.y_mm, o.footprint_radius_mm, containers), (seed, o.type)
