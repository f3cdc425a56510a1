"""Simulated sessions: determinism, ground-truth schema, box geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.sim.catalog import HELDOUT_ITEM_TYPES, TRAIN_ITEM_TYPES
from sorterbot_cloud.sim.session import simulate_session

SMALL = {"width_px": 192, "height_px": 144, "pulse_widths": (1100, 1475, 1850), "progress": False}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    paths = {}
    for name, seed in (("a", 7), ("a_again", 7), ("b", 8)):
        paths[name] = simulate_session(root / name, seed, n_items=5, n_item_types=3, n_containers=2, **SMALL)
    return paths


def _pixels(session_dir):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(session_dir.glob("*.jpg"))}


def test_same_seed_gives_identical_ground_truth_and_pixels(sessions):
    a, again = sessions["a"], sessions["a_again"]
    assert a.read_text() == again.read_text()
    pa, pb = _pixels(a.parent), _pixels(again.parent)
    assert list(pa) == ["1100.jpg", "1475.jpg", "1850.jpg"]
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name])
    assert (a.parent / "1475.jpg").read_bytes() == (again.parent / "1475.jpg").read_bytes()


def test_other_seed_gives_another_session(sessions):
    ta = json.loads(sessions["a"].read_text())
    tb = json.loads(sessions["b"].read_text())
    assert [o["x_mm"] for o in ta["objects"]] != [o["x_mm"] for o in tb["objects"]]
    assert not np.array_equal(_pixels(sessions["a"].parent)["1475.jpg"], _pixels(sessions["b"].parent)["1475.jpg"])


def test_ground_truth_schema_and_geometry(sessions):
    truth = json.loads(sessions["a"].read_text())
    constants = ArmConstants.from_mapping(truth["arm_constants"])  # validates, legacy keys + camera block
    assert constants.calibrated and truth["arm_constants"]["camera"]["calib_width"] == 1640
    assert {"arm_id", "session_id", "seed", "objects", "frames"} <= set(truth)
    classes = [o["class"] for o in truth["objects"]]
    assert classes.count("item") == 5 and classes.count("container") == 2
    items = [o for o in truth["objects"] if o["class"] == "item"]
    assert len({o["type"] for o in items}) == 3 and {o["type"] for o in items} <= set(TRAIN_ITEM_TYPES)
    for o in truth["objects"]:
        assert o["r_mm"] == pytest.approx(np.hypot(o["x_mm"], o["y_mm"]), abs=0.01)
        assert o["theta_deg"] == pytest.approx(np.degrees(np.arctan2(o["y_mm"], o["x_mm"])), abs=0.01)
    ids = {o["object_id"] for o in truth["objects"]}
    for frame in truth["frames"]:
        assert frame["width_px"] == 192 and frame["height_px"] == 144
        assert frame["image_name"] == f"{int(frame['pw0'])}.jpg"
        assert frame["theta_deg"] == pytest.approx(constants.theta_of_pw(frame["pw0"]))
        for box in frame["boxes"]:
            x0, y0, x1, y1 = box["box_xyxy"]
            assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 144
            assert 0.3 <= box["visible_fraction"] <= 1.0
            assert box["object_id"] in ids
    assert sum(len(f["boxes"]) for f in truth["frames"]) > 0
    assert (sessions["a"].parent / "contact_sheet.png").stat().st_size > 1000


def test_heldout_session_uses_heldout_types(tmp_path):
    path = simulate_session(tmp_path, 3, n_items=4, n_item_types=2, n_containers=1, heldout=True, contact_sheet=False, **SMALL)
    truth = json.loads(path.read_text())
    assert {o["type"] for o in truth["objects"] if o["class"] == "item"} <= set(HELDOUT_ITEM_TYPES)
    assert truth["split"] == "heldout"


def test_boxes_cover_the_rendered_object(tmp_path):
    """The ground-truth box of a lone item holds the pixels that changed when it was added."""
    from sorterbot_cloud.sim.render import SceneRenderer
    from sorterbot_cloud.sim.scene import Scene, generate_scene
    from sorterbot_cloud.sim.session import frame_boxes

    rng = np.random.default_rng(11)
    scene = generate_scene(rng, ["ball"], 0)
    empty = Scene([], scene.texture, scene.texture_seed, scene.lighting_seed)
    constants = ArmConstants.reference()
    theta = scene.objects[0].theta_deg  # look straight at it
    with SceneRenderer(320, 240, anti_aliasing=None) as renderer:
        renderer.set_scene(scene)
        with_ball = renderer.render(theta).astype(int)
        renderer.set_scene(empty)
        without = renderer.render(theta).astype(int)
    (box,) = frame_boxes(scene.objects, constants.camera, theta, 320, 240)
    changed = np.abs(with_ball - without).sum(axis=2) > 60
    rows, cols = np.nonzero(changed)
    x0, y0, x1, y1 = box["box_xyxy"]
    # the ball's pixels are inside its box (the baked shadow lies on the table outside it)
    ball = (cols >= x0 - 2) & (cols <= x1 + 2) & (rows >= y0 - 2) & (rows <= y1 + 2)
    assert ball.sum() > 0.5 * (x1 - x0) * (y1 - y0)
    inside = changed[int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1]
    assert inside.mean() > 0.6  # a sphere fills pi/4 of its box


@pytest.mark.parametrize("kwargs,match", [
    ({"pulse_widths": ()}, "pulse_widths"),
    ({"width_px": 4}, "frame size"),
    ({"item_types": ["spoon"]}, "unknown item type"),
    ({"n_items": 2, "n_item_types": 3}, "n_item_types"),
], ids=["no-frames", "tiny", "bad-type", "types-over-items"])
def test_bad_session_requests_raise(tmp_path, kwargs, match):
    args = {**SMALL, "progress": False, **kwargs}
    with pytest.raises(BadRequest, match=match):
        simulate_session(tmp_path, 0, **args)
