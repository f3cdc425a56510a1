"""``views`` mode: orbit grid, mesh/STEP loading, COCO and YOLO boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pyvista as pv
from PIL import Image
from pycocotools.coco import COCO

from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.sim.views import (
    DEFAULT_ALTITUDES_DEG,
    DEFAULT_AZIMUTHS_DEG,
    DEFAULT_TILTS_DEG,
    load_model,
    orbit_pose,
    render_views,
)

SMALL = {"width_px": 160, "height_px": 120, "progress": False}


def test_default_orbit_grid_is_15_degree_steps():
    assert DEFAULT_AZIMUTHS_DEG[0] == 0 and np.allclose(np.diff(DEFAULT_AZIMUTHS_DEG), 15) and DEFAULT_AZIMUTHS_DEG[-1] == 345
    assert DEFAULT_ALTITUDES_DEG[0] == -40 and max(DEFAULT_ALTITUDES_DEG) <= 40 and np.allclose(np.diff(DEFAULT_ALTITUDES_DEG), 15)
    assert DEFAULT_TILTS_DEG == (-15.0, 0.0, 15.0)


@pytest.mark.parametrize("az,alt,tilt", [(0, 0, 0), (90, 35, 15), (200, -40, -15)], ids=["front", "above-rolled", "below-rolled"])
def test_orbit_pose_is_a_rotation_looking_at_the_target(az, alt, tilt):
    target = np.array([1.0, 2.0, 3.0])
    rotation, center = orbit_pose(target, 100.0, az, alt, tilt)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(np.linalg.norm(center - target), 100.0)
    np.testing.assert_allclose(rotation[2], (target - center) / 100.0, atol=1e-12)
    # roll: the right axis is the horizontal right axis turned by the tilt about the view axis
    right0 = np.cross(rotation[2], [0.0, 0.0, 1.0])
    right0 /= np.linalg.norm(right0)
    assert np.degrees(np.arccos(np.clip(rotation[0] @ right0, -1, 1))) == pytest.approx(abs(tilt), abs=1e-6)


def test_views_of_an_stl_write_coco_and_yolo_boxes_around_the_model(tmp_path):
    stl = tmp_path / "cone.stl"
    pv.Cone(radius=10.0, height=30.0, resolution=24).save(stl)
    path = render_views(stl, tmp_path / "out", colour=(0.9, 0.1, 0.1), size_mm=40.0, azimuths_deg=(0, 120), altitudes_deg=(-40, 20),
                        tilts_deg=(15,), seed=1, background=(0, 0, 0), **SMALL)
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 4
    for img in coco.loadImgs(coco.getImgIds()):
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        x, y, w, h = ann["bbox"]
        assert w > 10 and h > 10
        stem = img["file_name"].rsplit(".", 1)[0]
        label = (tmp_path / "out" / "labels" / f"{stem}.txt").read_text().split()
        assert label[0] == "0"
        np.testing.assert_allclose([float(v) for v in label[1:]], [(x + w / 2) / 160, (y + h / 2) / 120, w / 160, h / 120], atol=1e-4)
        pixels = np.asarray(Image.open(tmp_path / "out" / "images" / img["file_name"])).astype(int)
        rows, cols = np.nonzero(pixels.sum(axis=2) > 90)  # black background; the lit model is brighter
        assert len(rows) > 20
        # the model's red pixels lie inside its box (JPEG and blur: a few pixels of slack)
        assert cols.min() >= x - 3 and cols.max() <= x + w + 3 and rows.min() >= y - 3 and rows.max() <= y + h + 3


def test_step_files_are_meshed_with_gmsh(tmp_path):
    gmsh = pytest.importorskip("gmsh")
    step = tmp_path / "cyl.step"
    gmsh.initialize(interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("cyl")
        gmsh.model.occ.addCylinder(0, 0, 0, 0, 0, 12, 8)
        gmsh.model.occ.synchronize()
        gmsh.write(str(step))
    finally:
        gmsh.finalize()
    mesh = load_model(step, colour=(0.2, 0.3, 0.9))
    np.testing.assert_allclose(np.ptp(np.asarray(mesh.points), axis=0), [16, 16, 12], atol=0.2)
    assert mesh.point_data["rgb"].shape == (mesh.n_points, 3)


@pytest.mark.parametrize("model,match", [("spoon", "neither a model type"), ("notes.txt", "unsupported model file")], ids=["unknown", "suffix"])
def test_bad_models_raise(tmp_path, model, match):
    if model.endswith(".txt"):
        (tmp_path / model).write_text("x")
        model = str(tmp_path / model)
    with pytest.raises(BadRequest, match=match):
        load_model(model)


def test_views_of_a_catalogue_type(tmp_path):
    path = render_views("hex_nut", tmp_path, azimuths_deg=(45,), altitudes_deg=(35,), tilts_deg=(0,), **SMALL)
    data = json.loads(path.read_text())
    assert data["categories"] == [{"id": 1, "name": "item", "supercategory": "object"}]
    assert len(data["annotations"]) == 1
