"""Procedural item types: fixed per index, varied across indices, usable by scenes and crop exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from sorterbot_cloud.sim.catalog import (
    ITEM_TYPES,
    is_item_type,
    is_procedural,
    model_type,
    procedural_item_type,
    procedural_type_names,
)
from sorterbot_cloud.sim.cli import simulate
from sorterbot_cloud.sim.datasets import export_item_crops
from sorterbot_cloud.sim.scene import build_object, generate_scene

NAMES = procedural_type_names(40)


def test_names_and_lookup():
    assert NAMES[0] == "proc_0000" and NAMES[-1] == "proc_0039"
    assert procedural_type_names(2, start=7) == ("proc_0007", "proc_0008")
    assert all(is_procedural(n) and is_item_type(n) for n in NAMES)
    assert not any(is_procedural(n) for n in ITEM_TYPES)
    assert not is_procedural("proc_") and not is_procedural("proc_12a") and not is_item_type("spoon")
    assert model_type("coin") is ITEM_TYPES["coin"]
    assert model_type("proc_0003").name == "proc_0003" and model_type("proc_0003").kind == "item"
    with pytest.raises(KeyError):
        model_type("spoon")
    with pytest.raises(KeyError):
        procedural_item_type("coin")


def test_a_type_is_fixed_and_instances_are_seeded():
    a = procedural_item_type("proc_0011").build(np.random.default_rng(5))
    b = procedural_item_type("proc_0011").build(np.random.default_rng(5))
    c = procedural_item_type("proc_0011").build(np.random.default_rng(6))
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.point_data["rgb"], b.point_data["rgb"])
    # another instance of the same type: a little bigger or smaller, same shape family
    assert a.n_points == c.n_points
    assert not np.array_equal(a.points, c.points)


@pytest.mark.parametrize("name", NAMES)
def test_types_are_items_of_the_catalogue_size_range(name):
    rng = np.random.default_rng(1)
    for _ in range(3):
        mesh, _, height_mm = build_object(name, rng)
        pts = np.asarray(mesh.points)
        assert 15.0 <= max(np.ptp(pts[:, :2], axis=0)) <= 60.0  # the catalogue's item range (test_sim_scene.py)
        assert pts[:, 2].min() == pytest.approx(0.0, abs=1e-6)  # resting on the table
        assert 1.5 <= height_mm <= 60.0
    assert mesh.point_data["rgb"].dtype == np.uint8 and mesh.n_points >= 1500


def test_types_vary_in_shape_colour_and_pattern():
    descriptions = [procedural_item_type(n).description for n in NAMES]
    families = {d.split()[1].rstrip(",") for d in descriptions}
    patterns = {d.split()[-1] for d in descriptions}
    assert len(families) >= 6 and len(patterns) >= 5
    colours = np.array([procedural_item_type(n).build(np.random.default_rng(0)).point_data["rgb"].mean(0) for n in NAMES])
    # mean colours spread: no two thirds of the types share one colour
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=2)[np.triu_indices(len(NAMES), 1)]
    assert np.median(distances) > 40.0
    grey = np.ptp(colours, axis=1) < 25.0
    assert 0.1 <= grey.mean() <= 0.7  # a share of achromatic types (PROCEDURAL_ACHROMATIC_SHARE)


def test_scenes_and_crops_take_procedural_types(tmp_path):
    scene = generate_scene(np.random.default_rng(2), ["proc_0001", "proc_0002", "coin"], 1)
    assert [o.type for o in scene.items] == ["proc_0001", "proc_0002", "coin"]
    path = export_item_crops(tmp_path, 1, seed=4, types=["proc_0005", "proc_0006"], width_px=640, height_px=480, progress=False)
    index = json.loads(path.read_text())
    assert sorted(c["path"] for c in index["crops"]) == ["proc_0005/0.png", "proc_0006/0.png"]
    assert index["train_types"] == ["proc_0005", "proc_0006"] and index["heldout_types"] == []
    assert {c["split"] for c in index["crops"]} == {"train"}


def test_cli_crops_procedural_only_and_usage_error(tmp_path):
    runner = CliRunner()
    result = runner.invoke(simulate, ["crops", "--out", str(tmp_path / "c"), "--split", "none", "--procedural", "2", "--procedural-start", "30",
                                      "--per-type", "1", "--width", "640", "--height", "480"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir()) == ["proc_0030", "proc_0031"]
    result = runner.invoke(simulate, ["crops", "--out", str(tmp_path / "d"), "--split", "none"])
    assert result.exit_code == 2 and "no item types chosen" in result.output


MARKED = procedural_type_names(12, marked=True)


def test_marked_names_and_lookup():
    assert MARKED[0] == "procm_0000" and procedural_type_names(1, start=7, marked=True) == ("procm_0007",)
    assert all(is_procedural(n) and is_item_type(n) for n in MARKED)
    assert not is_procedural("procm_") and not is_procedural("procm_1x")
    assert "marks" in model_type("procm_0003").description and "marks" not in model_type("proc_0003").description


def test_unmarked_types_are_unchanged_by_the_marked_family():
    # proc_ types keep their own stream: the marked family must not shift their definitions
    from sorterbot_cloud.sim.catalog import _procedural_definition

    plain, marked = _procedural_definition(3), _procedural_definition(3, marked=True)
    assert "mark_shape" not in plain and "mark_shape" in marked
    assert plain["size_mm"] != marked["size_mm"]  # an unrelated draw, not proc_0003 with marks


@pytest.mark.parametrize("name", MARKED[:6])
def test_marks_differ_between_instances_of_one_type(name):
    t = procedural_item_type(name)
    a, b = t.build(np.random.default_rng(1)), t.build(np.random.default_rng(2))
    mark = np.asarray(procedural_item_type(name).build(np.random.default_rng(1)).point_data["rgb"])
    np.testing.assert_array_equal(mark, a.point_data["rgb"])  # seeded: the same instance again
    # each instance carries marks: some points painted in one colour far from the body's
    # unmarked build (same rng draws for the body, so the body points match one to one)
    from sorterbot_cloud.sim.catalog import _procedural_body, _procedural_definition

    index = int(name.split("_")[1])
    for inst, seed in ((a, 1), (b, 2)):
        body = _procedural_body(_procedural_definition(index, marked=True), np.random.default_rng(seed))
        changed = np.any(np.asarray(body.point_data["rgb"]) != np.asarray(inst.point_data["rgb"]), axis=1)
        assert 0 < changed.sum() < 0.6 * inst.n_points
        assert np.any(np.asarray(inst.points)[changed, 2] > 0.5)  # centred above the bottom, so seen
    # and the two instances are marked in different places
    body_a = _procedural_body(_procedural_definition(index, marked=True), np.random.default_rng(1))
    body_b = _procedural_body(_procedural_definition(index, marked=True), np.random.default_rng(2))
    marks_a = np.any(np.asarray(body_a.point_data["rgb"]) != np.asarray(a.point_data["rgb"]), axis=1)
    marks_b = np.any(np.asarray(body_b.point_data["rgb"]) != np.asarray(b.point_data["rgb"]), axis=1)
    assert a.n_points != b.n_points or not np.array_equal(marks_a, marks_b)


def test_cli_crops_marked(tmp_path):
    result = CliRunner().invoke(simulate, ["crops", "--out", str(tmp_path / "c"), "--split", "none", "--procedural-marked", "2",
                                           "--per-type", "1", "--width", "640", "--height", "480"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir()) == ["procm_0000", "procm_0001"]
