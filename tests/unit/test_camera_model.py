"""The simulator and the geometry stage share one camera model: projection, back-projection
and the rendered pixels must agree."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sorterbot_cloud.camera import ArmConstants, CameraModel
from sorterbot_cloud.sim.catalog import TRAIN_ITEM_TYPES
from sorterbot_cloud.sim.meshes import paint, revolve
from sorterbot_cloud.sim.scene import Scene, SceneObject, generate_scene

REFERENCE = CameraModel.reference()
#: An off-centre, non-square-pixel camera: catches a renderer that ignores cx, cy or fx != fy.
SKEWED = dataclasses.replace(REFERENCE, fx=REFERENCE.fx * 1.08, cx=REFERENCE.cx + 60.0, cy=REFERENCE.cy - 40.0,
                             height_mm=220.0, pitch_deg=56.0, offset_mm=40.0)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
@pytest.mark.parametrize("size", [(1640, 1232), (820, 616)], ids=["full", "half"])
def test_footprint_centres_round_trip_within_1mm(seed, size):
    rng = np.random.default_rng(seed)
    scene = generate_scene(rng, list(rng.choice(TRAIN_ITEM_TYPES, size=5)), 2)
    constants = ArmConstants.reference()
    width, height = size
    for pw in (1000, 1250, 1475, 1700, 1950):
        theta = constants.theta_of_pw(pw)
        centres = np.array([[o.x_mm, o.y_mm, 0.0] for o in scene.objects])
        uvd = REFERENCE.project(centres, theta, width, height)
        visible = (uvd[:, 2] > 0) & (uvd[:, 0] >= 0) & (uvd[:, 0] < width) & (uvd[:, 1] >= 0) & (uvd[:, 1] < height)
        back = REFERENCE.backproject_to_plane(uvd[visible, :2], theta, width, height)
        np.testing.assert_allclose(back[:, :2], centres[visible, :2], atol=1.0)


def _marker_scene(x_mm: float, y_mm: float) -> Scene:
    disc = revolve([(0, 0.2), (6.0, 0.2), (6.0, 0.0), (0, 0.0)], 48)
    mesh = paint(disc, (1.0, 0.0, 0.0))
    mesh.points = np.asarray(mesh.points) + np.array([x_mm, y_mm, 0.0])
    mesh = mesh.compute_normals()
    marker = SceneObject(0, "item", "coin", x_mm, y_mm, 0.0, mesh, 12.0, 0.2, 6.0)
    return Scene([marker], texture="concrete", texture_seed=0, lighting_seed=0)


@pytest.mark.parametrize("camera", [REFERENCE, SKEWED], ids=["reference", "skewed"])
@pytest.mark.parametrize("theta_deg,r_mm,phi_deg", [(0.0, 300.0, 0.0), (20.0, 220.0, 35.0), (-30.0, 360.0, -40.0)],
                         ids=["centre", "near-left", "far-right"])
def test_rendered_marker_lands_where_project_says(camera, theta_deg, r_mm, phi_deg):
    from sorterbot_cloud.sim.render import SceneRenderer

    width, height = 400, 300
    x = r_mm * np.cos(np.radians(phi_deg))
    y = r_mm * np.sin(np.radians(phi_deg))
    expected = camera.project(np.array([[x, y, 0.2]]), theta_deg, width, height)[0, :2]
    assert 0 <= expected[0] < width and 0 <= expected[1] < height
    with SceneRenderer(width, height, camera, anti_aliasing=None) as renderer:
        renderer.set_scene(_marker_scene(x, y))
        image = renderer.render(theta_deg).astype(int)
    red = (image[..., 0] > 120) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert red.sum() >= 4
    rows, cols = np.nonzero(red)
    centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5])  # pixel centres
    np.testing.assert_allclose(centroid, expected, atol=2.0)
