import math

import numpy as np
import pytest

from sorterbot_cloud.camera import ArmConstants, CameraModel
from sorterbot_cloud.errors import InvalidArmConstants

LEGACY = {
    "arm_id": "ARM001",
    "arm_radius": 1400,
    "rotation_range_as_deg": 130,
    "rotation_range_as_pw": 1400,
    "dist_min_as_pw": 1200,
    "dist_max_as_pw": 1900,
}


def test_legacy_constants_parse_without_camera():
    constants = ArmConstants.from_mapping(LEGACY)
    assert not constants.calibrated and constants.arm_id == "ARM001"


def test_round_trip_with_camera():
    reference = ArmConstants.reference()
    assert ArmConstants.from_mapping(reference.to_mapping()) == reference


def test_reference_focal_length_matches_field_of_view():
    cam = CameraModel.reference()
    # Raspberry Pi camera v2: 62.2 x 48.8 degrees at 1640x1232 -> about 1360 px.
    assert cam.fx == pytest.approx(1360, abs=3) and cam.fy == pytest.approx(1360, abs=3)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"arm_radius": None}, "arm_radius"),
        ({"rotation_range_as_pw": 0}, "'rotation_range_as_pw' must be -20,000 to -1 or 1 to 20,000 µs, got 0"),
        ({"dist_max_as_pw": 1200}, "differ"),
        ({"arm_radius": "12"}, "finite number"),
        ({"arm_radius": True}, "finite number"),
        ({"arm_radius": float("inf")}, "finite number"),
        ({"camera": [1, 2]}, "camera must be a JSON object"),
        ({"camera": {"fx": 1}}, "missing arm constant 'camera\\.calib_width'"),
    ],
    ids=["missing", "zero-range", "empty-reach", "string", "bool", "inf", "camera-list", "camera-partial"],
)
def test_malformed_constants_are_rejected(change, match):
    data = dict(LEGACY)
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    with pytest.raises(InvalidArmConstants, match=match):
        ArmConstants.from_mapping(data)


def test_not_an_object_is_rejected():
    with pytest.raises(InvalidArmConstants, match="JSON object"):
        ArmConstants.from_mapping([1, 2, 3])


def test_pulse_width_conversions_are_inverse():
    c = ArmConstants.reference()
    for pw in (1000.0, 1475.0, 1950.0):
        assert c.pw0_of_theta(c.theta_of_pw(pw)) == pytest.approx(pw)
    assert c.pw1_of_r(c.r_min_mm) == pytest.approx(c.dist_min_as_pw)
    assert c.pw1_of_r(c.r_max_mm) == pytest.approx(c.dist_max_as_pw)


@pytest.mark.parametrize("theta_deg", [-40.0, 0.0, 25.0], ids=lambda t: f"theta{t}")
def test_project_then_backproject_ground_points(theta_deg):
    cam = CameraModel.reference()
    rng = np.random.default_rng(0)
    t = math.radians(theta_deg)
    # ground points in front of the camera
    dist = rng.uniform(200, 450, 20)
    lateral = rng.uniform(-80, 80, 20)
    pts = np.stack([dist * math.cos(t) - lateral * math.sin(t), dist * math.sin(t) + lateral * math.cos(t), np.zeros(20)], 1)
    uvd = cam.project(pts, theta_deg, 1640, 1232)
    assert np.all(uvd[:, 2] > 0)
    back = cam.backproject_to_plane(uvd[:, :2], theta_deg, 1640, 1232)
    np.testing.assert_allclose(back, pts, atol=1e-6)


def test_optical_axis_hits_principal_point_and_image_y_points_down():
    cam = CameraModel.reference()
    rotation, center = cam.pose(0.0)
    ahead = center + 100 * rotation[2]
    u, v, depth = cam.project(ahead[None], 0.0, 1640, 1232)[0]
    assert (u, v) == pytest.approx((820, 616)) and depth == pytest.approx(100)
    # A point lower in the world appears further down the image (y down), and a point to
    # the right of the viewing direction (-y world at theta 0) to the right.
    lower = cam.project((ahead - [0, 0, 10])[None], 0.0, 1640, 1232)[0]
    right = cam.project((ahead - [0, 10, 0])[None], 0.0, 1640, 1232)[0]
    assert lower[1] > v and right[0] > u


def test_rays_above_horizon_do_not_reach_the_table():
    cam = CameraModel.reference()
    out = cam.backproject_to_plane(np.array([[820, 0.0], [820, -5000.0]]), 0.0, 1640, 1232)
    assert np.isnan(out[1]).all()


def _changed(base: dict, change: dict) -> dict:
    """``base`` with ``change`` applied (``camera.`` names go into the camera block)."""
    data = dict(base, camera=dict(base["camera"])) if "camera" in base else dict(base)
    for name, value in change.items():
        if name.startswith("camera."):
            data["camera"][name.removeprefix("camera.")] = value
        else:
            data[name] = value
    return data


OUT_OF_RANGE = {
    "radius-huge-int": ({"arm_radius": 10**400}, "'arm_radius' must be 1 to 1,000,000 pixels, got an integer of about 401 digits"),
    "radius-1e308": ({"arm_radius": 1e308}, "'arm_radius' must be 1 to 1,000,000 pixels, got 1e\\+308"),
    "radius-subnormal": ({"arm_radius": 1e-320}, "'arm_radius' must be 1 to"),
    "radius-negative": ({"arm_radius": -1400}, "'arm_radius' must be 1 to"),
    "degrees-subnormal": ({"rotation_range_as_deg": 1e-320}, "'rotation_range_as_deg' must be -360 to -1 or 1 to 360 degrees"),
    "degrees-two-turns": ({"rotation_range_as_deg": 720}, "'rotation_range_as_deg' must be"),
    "pw-range-huge": ({"rotation_range_as_pw": -1e300}, "'rotation_range_as_pw' must be"),
    "reach-pw-negative": ({"dist_min_as_pw": -5}, "'dist_min_as_pw' must be 0 to 20,000 µs"),
    "reach-pw-beyond-period": ({"dist_max_as_pw": 20_001}, "'dist_max_as_pw' must be 0 to 20,000 µs"),
    "calib-width-half": ({"camera.calib_width": 0.5}, "'camera.calib_width' must be 1 to 65,535 pixels, got 0.5"),
    "calib-width-fraction": ({"camera.calib_width": 1640.5}, "'camera.calib_width' must be a whole number"),
    "calib-height-huge": ({"camera.calib_height": 10**6}, "'camera.calib_height' must be 1 to 65,535"),
    "fx-huge": ({"camera.fx": 1e308}, "'camera.fx' must be .* field of view of 1 to 170 degrees over calib_width 1640"),
    "fy-subnormal": ({"camera.fy": 1e-320}, "'camera.fy' must be .* over calib_height 1232"),
    "cx-off-image": ({"camera.cx": 1641}, "'camera.cx' must be 0 to 1,640 pixels"),
    "cy-negative": ({"camera.cy": -1}, "'camera.cy' must be 0 to 1,232 pixels"),
    "height-zero": ({"camera.height_mm": 0}, "'camera.height_mm' must be 1 to 10,000 mm"),
    "offset-huge": ({"camera.offset_mm": -1e308}, "'camera.offset_mm' must be -10,000 to 10,000 mm"),
    "pitch-subnormal": ({"camera.pitch_deg": 1e-320}, "'camera.pitch_deg' must be 1 to 90 degrees"),
    "zero-pw-negative": ({"zero_pw": -1}, "'zero_pw' must be 0 to 20,000"),
    "reach-huge": ({"r_max_mm": 1e308}, "'r_max_mm' must be 0 to 10,000 mm"),
    "reach-span-tiny": ({"r_min_mm": 150.0, "r_max_mm": 150.0 + 1e-9}, "r_max_mm must be greater than r_min_mm by at least 1 mm"),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE), ids=list(OUT_OF_RANGE))
def test_constants_out_of_their_physical_range_are_rejected_naming_the_field(case):
    change, match = OUT_OF_RANGE[case]
    data = _changed(ArmConstants.reference(calibrated=True).to_mapping(), change)
    with pytest.raises(InvalidArmConstants, match=match):
        ArmConstants.from_mapping(data)


@pytest.mark.parametrize("change", [{"arm_radius": 1}, {"arm_radius": 10**6}, {"rotation_range_as_deg": -360},
                                    {"camera.calib_width": 1640.0}, {"camera.pitch_deg": 90}, {"camera.offset_mm": -60}],
                         ids=["radius-low", "radius-high", "degrees-reversed", "calib-width-float", "pitch-down", "offset-behind"])
def test_constants_at_the_ends_of_their_range_are_accepted(change):
    data = _changed(ArmConstants.reference(calibrated=True).to_mapping(), change)
    constants = ArmConstants.from_mapping(data)
    for name, value in change.items():
        holder = constants.camera if name.startswith("camera.") else constants
        assert getattr(holder, name.removeprefix("camera.")) == value


@pytest.mark.parametrize(
    ("arm_id", "expected"),
    [("ARM001", "ARM001"), (7, "7"), ("", None), (None, None)],
    ids=["string", "control-panel-number", "empty", "absent"],
)
def test_body_arm_id_follows_the_query_rule(arm_id, expected):
    assert ArmConstants.from_mapping(dict(LEGACY, arm_id=arm_id)).arm_id == expected


@pytest.mark.parametrize(
    "arm_id", ["\ud800", "A" * 65, "A" * 10_000, "ARM001\n", "a/b", True, 1.5, ["A"], 10**70],
    ids=["lone-surrogate", "65-chars", "10k-chars", "trailing-newline", "slash", "bool", "float", "list", "huge-int"],
)
def test_malformed_body_arm_id_is_rejected(arm_id):
    with pytest.raises(InvalidArmConstants, match="'arm_id' must be 1 to 64 characters") as caught:
        ArmConstants.from_mapping(dict(LEGACY, arm_id=arm_id))
    assert len(caught.value.detail) < 200  # the value is shown shortened
    caught.value.detail.encode("utf-8")  # and can be sent (a lone surrogate is escaped)
