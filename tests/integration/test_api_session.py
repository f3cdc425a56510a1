"""Ingest then trigger over HTTP, end to end on a real PostgreSQL (fake models).

The geometry, dedup, clustering and planning stages are real; the detector and embedder
are the colour fakes of ``conftest_service`` (the models are not under test here).
"""

from __future__ import annotations

import numpy as np
import pytest

from sorterbot_cloud.api import create_app
from sorterbot_cloud.camera import CONSTANT_RANGES, FIELD_OF_VIEW_RANGE_DEG, ArmConstants
from sorterbot_cloud.imaging import decode_image
from tests.integration.conftest_service import (
    SESSION_FRAMES,
    FakeDetector,
    FakeEmbedder,
    Rect,
    colour_of_box,
    frame_bytes,
    legacy_constants,
)


@pytest.fixture
def app(settings, repository, archive):
    return create_app(settings, detector=FakeDetector(), embedder=FakeEmbedder(), repository=repository, archive=archive)


@pytest.fixture
def client(app):
    return app.test_client()


def post_session(client, arm="ARM001", session="s1", frames=SESSION_FRAMES):
    for name, rects in frames.items():
        response = client.post(f"/process_image?arm_id={arm}&session_id={session}&image_name={name}", data=frame_bytes(rects))
        assert response.status_code == 200, response.get_data(as_text=True)


def colours_per_container(result) -> dict[int, set[str]]:
    """container object_id -> colours of the items commanded into it."""
    objects = {o["object_id"]: o for o in result["objects"]}
    out: dict[int, set[str]] = {}
    for command in result["commands"]:
        det = objects[command["pick"]["object_id"]]["detections"][0]
        out.setdefault(command["place"]["object_id"], set()).add(colour_of_box(det["image_name"], det["box_xyxy"]))
    return out


def is_wire_list(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(c, list) and len(c) == 2
        and all(isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in c)
        for c in value
    )


@pytest.mark.parametrize(
    ("query", "constants"),
    [
        ("session_id=s1&arm_id=ARM001", legacy_constants()),
        ("session_id=s1", legacy_constants()),  # the original client: arm_id in the body
        ("session_id=s1", legacy_constants(arm_id=None)),  # the session's only arm
        ("session_id=s1", legacy_constants() | {"cloud_ip": "10.0.0.2", "cloud_port": 5000}),  # arm_config.yaml extras
    ],
    ids=["arm-in-query", "arm-in-body", "arm-from-db", "extra-config-keys"],
)
def test_compat_trigger_sorts_every_item_by_colour(client, repository, query, constants):
    post_session(client)
    response = client.post(f"/get_commands_of_session?{query}", json=constants)
    assert response.status_code == 200, response.get_data(as_text=True)
    wire = response.get_json()
    assert is_wire_list(wire)
    assert len(wire) == 4  # 4 items, each commanded once
    stored = repository.latest_commands("ARM001", "s1")
    assert stored["result"]["wire"] == wire
    per_container = colours_per_container(stored["result"])
    assert sorted(map(sorted, per_container.values())) == [["blue"], ["red"]]


def test_rich_route_matches_the_wire_route_and_is_deterministic(client):
    post_session(client)
    wire = client.post("/get_commands_of_session?session_id=s1", json=legacy_constants()).get_json()
    rich = client.post("/v1/arms/ARM001/sessions/s1/commands", json=legacy_constants()).get_json()
    again = client.post("/v1/arms/ARM001/sessions/s1/commands", json=legacy_constants()).get_json()
    assert rich["wire"] == wire == again["wire"]
    assert rich["commands"] == again["commands"] and rich["objects"] == again["objects"]
    assert rich["mode"] == "legacy" and rich["reason"] is None
    assert [[[c["pick"]["pw0"], c["pick"]["pw1"]], [c["place"]["pw0"], c["place"]["pw1"]]] for c in rich["commands"]] == wire
    items = [o for o in rich["objects"] if o["class"] == "item"]
    containers = [o for o in rich["objects"] if o["class"] == "container"]
    assert len(items) == 4 and len(containers) == 2
    assert all(o["cluster_id"] is not None for o in items) and all(o["cluster_id"] is None for o in containers)
    assert sorted(c["pick"]["object_id"] for c in rich["commands"]) == sorted(o["object_id"] for o in items)
    assert set(rich["timings_ms"]) >= {"load", "geometry", "dedup", "cluster", "plan", "store", "total"}
    assert client.get("/v1/arms/ARM001/sessions/s1/commands").get_json()["wire"] == wire


def test_calibrated_constants_give_calibrated_mode(client):
    post_session(client)
    constants = ArmConstants.reference(calibrated=True).to_mapping()
    rich = client.post("/v1/arms/ARM001/sessions/s1/commands", json=constants).get_json()
    assert rich["mode"] == "calibrated"
    assert len(rich["commands"]) == 4
    assert sorted(map(sorted, colours_per_container(rich).values())) == [["blue"], ["red"]]


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ({"1200.jpg": [Rect("red", (10, 10, 40, 40)), Rect("blue", (60, 10, 90, 40))]}, "no container"),
        ({"1200.jpg": [Rect("green", (100, 100, 200, 200))]}, "no item"),
        ({"1200.jpg": []}, "no container"),
    ],
    ids=["no-container", "no-item", "nothing"],
)
def test_session_with_nothing_to_sort_answers_empty_with_reason(client, frames, reason, caplog):
    post_session(client, frames=frames)
    with caplog.at_level("WARNING"):
        wire = client.post("/get_commands_of_session?session_id=s1", json=legacy_constants())
    assert wire.status_code == 200 and wire.get_json() == []
    assert any(reason in r.getMessage() for r in caplog.records)
    rich = client.post("/v1/arms/ARM001/sessions/s1/commands", json=legacy_constants()).get_json()
    assert rich["commands"] == [] and reason in rich["reason"]


def _range_corners() -> list[tuple[str, str, float]]:
    """``(mode, field, value)``: every arm constant at both ends of its accepted range
    (both signs where it may be negative), in each mode that reads it."""
    reference = ArmConstants.reference(calibrated=True).to_mapping()["camera"]
    corners = []
    for name, (low, high, signed, _unit) in CONSTANT_RANGES.items():
        if name in ("camera.fx", "camera.fy"):  # a field of view of 1 to 170 degrees
            side = reference["calib_width" if name == "camera.fx" else "calib_height"]
            low, high = (side / (2 * np.tan(np.radians(fov_deg / 2))) for fov_deg in FIELD_OF_VIEW_RANGE_DEG[::-1])
            low, high = low * (1 + 1e-9), high * (1 - 1e-9)
        elif name in ("camera.cx", "camera.cy"):  # on the calibrated image
            low, high = 0.0, float(reference["calib_width" if name == "camera.cx" else "calib_height"])
        values = [low, high] + ([-low, -high] if signed else [])
        modes = ["calibrated"] if name.startswith("camera.") or name in ("zero_pw", "r_min_mm", "r_max_mm") else ["legacy", "calibrated"]
        corners += [(mode, name, value) for mode in modes for value in values]
    return corners


def _with_constant(mode: str, name: str, value: float) -> dict:
    """The reference constants of ``mode`` with one constant changed, the others kept consistent."""
    constants = legacy_constants() if mode == "legacy" else ArmConstants.reference(calibrated=True).to_mapping()
    if name.startswith("camera."):
        camera = constants["camera"]
        key = name.removeprefix("camera.")
        if key in ("calib_width", "calib_height"):  # the intrinsics scale with the calibrated size
            focal, centre = ("fx", "cx") if key == "calib_width" else ("fy", "cy")
            camera[focal] *= value / camera[key]
            camera[centre] *= value / camera[key]
        camera[key] = value
    else:
        constants[name] = value
        low_mm, high_mm = CONSTANT_RANGES["r_min_mm"][:2]
        if name == "r_min_mm" and value >= constants["r_max_mm"]:
            constants["r_min_mm"], constants["r_max_mm"] = high_mm - 1.0, high_mm
        if name == "r_max_mm" and value <= constants["r_min_mm"]:
            constants["r_min_mm"], constants["r_max_mm"] = low_mm, low_mm + 1.0
    return constants


@pytest.mark.parametrize(
    ("query", "body", "status"),
    [
        ("session_id=unknown", legacy_constants(), 404),
        ("session_id=s1&arm_id=OTHER", legacy_constants(arm_id="OTHER"), 404),
        ("session_id=s1", {"arm_radius": 1}, 422),
        ("session_id=s1", legacy_constants(dist_max_as_pw=1200.0), 422),
        ("session_id=s1", legacy_constants() | {"camera": {"fx": 1}}, 422),
        ("session_id=s1", "not an object", 422),
        ("session_id=s1", legacy_constants(arm_radius=1e308), 422),
        ("session_id=s1", legacy_constants(arm_radius=1e-320), 422),
        ("session_id=s1", _with_constant("calibrated", "camera.calib_width", 0.5), 422),
        ("session_id=s1&arm_id=ARM001", legacy_constants(arm_id="\ud800"), 422),
        ("session_id=s1&arm_id=ARM001", legacy_constants(arm_id="A" * 10_000), 422),
        ("session_id=s1", legacy_constants(arm_id="ARM001\n"), 422),
        ("session_id=s1&arm_id=ARM001", legacy_constants(arm_id="ARM002"), 400),
    ],
    ids=["unknown-session", "unknown-arm", "missing-keys", "empty-reach-range", "bad-camera", "string-body",
         "radius-overflows-geometry", "radius-subnormal", "half-pixel-calibration", "body-arm-lone-surrogate",
         "body-arm-10k-chars", "body-arm-trailing-newline", "query-and-body-arms-differ"],
)
def test_rejected_trigger_stores_nothing(client, repository, query, body, status):
    post_session(client)
    before = [(d.detection_id, d.class_id) for d in repository.load_session("ARM001", "s1")]
    response = client.post(f"/get_commands_of_session?{query}", json=body)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert repository.latest_commands("ARM001", "s1") is None
    assert [(d.detection_id, d.class_id) for d in repository.load_session("ARM001", "s1")] == before


@pytest.mark.parametrize(
    ("route", "body", "status", "detail"),
    [
        ("commands", legacy_constants(arm_id="ARM002"), 400, "the body's arm_id 'ARM002' is not the arm of the request"),
        ("overview.png", legacy_constants(arm_id="ARM002"), 400, "the body's arm_id 'ARM002' is not the arm of the request"),
        ("commands", legacy_constants(arm_id="\ud800"), 422, "'arm_id' must be 1 to 64"),
        ("commands", legacy_constants(arm_id="A" * 10_000), 422, "'arm_id' must be 1 to 64"),
    ],
    ids=["commands-other-arm", "overview-other-arm", "commands-lone-surrogate", "commands-10k-chars"],
)
def test_v1_trigger_refuses_a_body_arm_id_that_is_not_the_urls(client, repository, route, body, status, detail):
    post_session(client)
    response = client.post(f"/v1/arms/ARM001/sessions/s1/{route}", json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    assert detail in response.get_json()["detail"]
    assert repository.latest_commands("ARM001", "s1") is None


@pytest.mark.parametrize("body_arm_id", ["ARM001", None, ""], ids=["same", "absent", "empty"])
def test_trigger_with_the_arm_in_query_and_body_alike_is_served(client, repository, body_arm_id):
    post_session(client)
    constants = legacy_constants() | {"arm_id": body_arm_id} if body_arm_id is not None else legacy_constants(arm_id=None)
    response = client.post("/get_commands_of_session?session_id=s1&arm_id=ARM001", json=constants)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert repository.latest_commands("ARM001", "s1")["result"]["wire"] == response.get_json()


def test_overview_png_of_latest_result(client):
    post_session(client)
    missing = client.get("/v1/arms/ARM001/sessions/s1/overview.png")
    assert missing.status_code == 404 and "POST the arm constants" in missing.get_json()["detail"]
    client.post("/get_commands_of_session?session_id=s1", json=legacy_constants())
    response = client.get("/v1/arms/ARM001/sessions/s1/overview.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    sheet = decode_image(response.data)
    assert sheet.shape[1] > 2 * 320 / 2 and sheet.shape[0] > 240 / 2
    posted = client.post("/v1/arms/ARM001/sessions/s1/overview.png", json=legacy_constants())
    assert posted.status_code == 200
    np.testing.assert_array_equal(decode_image(posted.data), sheet)


def test_torch_threads_setting_is_applied_when_the_app_loads(settings, repository, archive):
    import dataclasses

    import torch

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        # with the torch runtime; on ONNX Runtime (the default) the threads go to its sessions
        create_app(dataclasses.replace(settings, torch_threads=wanted, inference_runtime="torch"), detector=FakeDetector(),
                   embedder=FakeEmbedder(), repository=repository, archive=archive)
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_trigger_groups_by_the_embedders_group_distance(settings, repository, archive):
    """Without a distance of the settings' own (``grouping_distance`` null), the embedder's
    calibrated distance between kinds decides the number of groups."""
    import dataclasses

    embedder = FakeEmbedder()
    settings = dataclasses.replace(settings, grouping_distance=None)
    client = create_app(settings, detector=FakeDetector(), embedder=embedder, repository=repository, archive=archive).test_client()
    post_session(client)
    clusters = {}
    for distance in (0.05, 2.0):  # red and blue are farther apart than 0.05; nothing is farther than 2
        embedder.group_distance = distance
        rich = client.post("/v1/arms/ARM001/sessions/s1/commands", json=legacy_constants()).get_json()
        clusters[distance] = {o["cluster_id"] for o in rich["objects"] if o["class"] == "item"}
    assert clusters == {0.05: {0, 1}, 2.0: {0}}
    assert sorted(map(sorted, colours_per_container(rich).values())) == [["blue", "red"]]


def test_settings_grouping_distance_decides_where_shapes_are_appended(settings, repository, archive):
    """Legacy sessions with the reference camera append each item's size and height to its
    embedding; there ``Settings.grouping_distance`` decides, whatever the embedder's own."""
    import dataclasses

    assert settings.legacy_camera == "reference" and settings.grouping_size_weight > 0
    embedder = FakeEmbedder()
    embedder.group_distance = 2.0  # alone, it would put every item in one group
    clusters = {}
    for distance in (0.05, 2.0):
        app = create_app(dataclasses.replace(settings, grouping_distance=distance), detector=FakeDetector(), embedder=embedder,
                         repository=repository, archive=archive)
        client = app.test_client()
        if distance == 0.05:
            post_session(client)
        rich = client.post("/v1/arms/ARM001/sessions/s1/commands", json=legacy_constants()).get_json()
        clusters[distance] = {o["cluster_id"] for o in rich["objects"] if o["class"] == "item"}
    assert clusters == {0.05: {0, 1}, 2.0: {0}}


@pytest.mark.parametrize(("mode", "name", "value"), _range_corners(), ids=lambda v: f"{v:g}" if isinstance(v, float) else v)
def test_constants_at_the_ends_of_their_ranges_give_commands(client, mode, name, value):
    post_session(client)
    constants = _with_constant(mode, name, value)
    assert ArmConstants.from_mapping(constants)  # inside the documented range
    wire = client.post("/get_commands_of_session?session_id=s1", json=constants)
    assert wire.status_code == 200, wire.get_data(as_text=True)
    assert is_wire_list(wire.get_json())
    assert np.isfinite(np.array(wire.get_json(), dtype=float)).all()
    rich = client.post("/v1/arms/ARM001/sessions/s1/commands", json=constants)
    assert rich.status_code == 200, rich.get_data(as_text=True)
    assert rich.get_json()["wire"] == wire.get_json()
