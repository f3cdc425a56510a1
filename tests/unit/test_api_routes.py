"""The HTTP boundary without a database: validation, problem details, predict, OpenAPI.

The store is not under test here, so :class:`FakeRepository` (in memory) stands in for
it; the detector and embedder are the fakes of ``conftest_service``. End-to-end tests on
a real PostgreSQL live in ``tests/integration/test_api_*.py``.
"""

from __future__ import annotations

import io
import json
import re

import pytest

from sorterbot_cloud.api import create_app
from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.config import Settings
from tests.integration.conftest_service import (
    FakeArchive,
    FakeDetector,
    FakeEmbedder,
    Rect,
    frame_bytes,
    legacy_constants,
)

CAMERA = ArmConstants.reference(calibrated=True).to_mapping()["camera"]
PNG = frame_bytes([Rect("red", (10, 10, 40, 40)), Rect("green", (100, 100, 180, 180))])
MAX_BODY_BYTES = 200_000


class FakeRepository:
    """In-memory stand-in for :class:`sorterbot_cloud.db.Repository` (records every write)."""

    def __init__(self, ping_ok: bool = True) -> None:
        self.frames: dict[tuple[str, str, str], tuple] = {}
        self.colours: dict[tuple[str, str, str], list | None] = {}
        self.writes = 0
        self.ping_ok = ping_ok

    def ping(self) -> bool:
        return self.ping_ok

    def save_frame(self, frame, detections, embeddings, image_uri, colours_lab=None) -> int:
        self.writes += 1
        self.frames[(frame.arm_id, frame.session_id, frame.image_name)] = (frame, detections, embeddings)
        self.colours[(frame.arm_id, frame.session_id, frame.image_name)] = colours_lab
        return len(self.frames)

    def arm_ids_of_session(self, session_id):
        return sorted({a for a, s, _ in self.frames if s == session_id})

    def load_session(self, arm_id, session_id):
        from sorterbot_cloud.errors import UnknownSession

        raise UnknownSession(f"no frame stored for arm_id={arm_id!r}, session_id={session_id!r}")

    def save_commands(self, *args, **kwargs):
        self.writes += 1


class ExplodingDetector:
    """A detector that fails with an internal message (must not leak to the client)."""

    def detect(self, image):
        raise RuntimeError("secret internal failure at /srv/model.pt")


@pytest.fixture
def repository():
    return FakeRepository()


@pytest.fixture
def app(tmp_path, repository):
    settings = Settings.load(environ={}, data_dir=tmp_path, max_body_bytes=MAX_BODY_BYTES)
    return create_app(
        settings, detector=FakeDetector(), embedder=FakeEmbedder(), repository=repository, archive=FakeArchive()
    )


@pytest.fixture
def client(app):
    return app.test_client()


def assert_problem(response, status: int, detail_pattern: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status
    assert set(body) >= {"type", "title", "status", "detail", "instance", "request_id"}
    assert re.search(detail_pattern, body["detail"]), body["detail"]
    return body


INGEST = "/process_image?arm_id=ARM001&session_id=s1&image_name=1200.jpg"

BAD_INGEST = {
    "no-arm-id": ("/process_image?session_id=s1&image_name=1200.jpg", PNG, "image/png", 400, "missing parameter 'arm_id'"),
    "no-session-id": ("/process_image?arm_id=A&image_name=1200.jpg", PNG, "image/png", 400, "missing parameter 'session_id'"),
    "no-image-name": ("/process_image?arm_id=A&session_id=s1", PNG, "image/png", 400, "missing parameter 'image_name'"),
    "arm-id-slash": ("/process_image?arm_id=a/b&session_id=s1&image_name=1200.jpg", PNG, "image/png", 400, "arm_id must be"),
    "arm-id-too-long": (f"/process_image?arm_id={'a' * 65}&session_id=s1&image_name=1200.jpg", PNG, "image/png", 400, "arm_id must be"),
    "image-name-traversal": ("/process_image?arm_id=A&session_id=s1&image_name=../../etc/passwd", PNG, "image/png", 400, "image_name must be"),
    "image-name-not-pw": ("/process_image?arm_id=A&session_id=s1&image_name=cat.jpg", PNG, "image/png", 400, "image_name must be"),
    "empty-body-local": (INGEST, b"", None, 400, "empty"),
    "text-body": (INGEST, b"not an image at all", "application/octet-stream", 400, "not a JPEG or PNG"),
    "truncated-png": (INGEST, PNG[: len(PNG) // 2], "image/png", 400, "truncated"),
    "wrong-content-type": (INGEST, PNG, "text/plain", 415, "not accepted"),
    "json-content-type": (INGEST, b"{}", "application/json", 415, "not accepted"),
    "too-large": (INGEST, PNG + b"\x00" * MAX_BODY_BYTES, "image/png", 413, f"limit of {MAX_BODY_BYTES} bytes"),
}


@pytest.mark.parametrize("case", list(BAD_INGEST), ids=list(BAD_INGEST))
def test_bad_ingest_is_a_problem_and_stores_nothing(client, repository, case):
    url, body, content_type, status, detail = BAD_INGEST[case]
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(url, data=body, headers=headers)
    assert_problem(response, status, detail)
    assert repository.writes == 0


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "application/octet-stream", None], ids=str)
def test_ingest_accepts_the_design_content_types(client, repository, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(INGEST, data=PNG, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert [d["class"] for d in body["detections"]] == ["item", "container"]
    assert body["detections"][0]["box_xyxy"] == [10.0, 10.0, 41.0, 41.0]
    assert set(body["timings_ms"]) >= {"decode", "detect", "embed", "store", "total"}
    frame, detections, embeddings = repository.frames[("ARM001", "s1", "1200.jpg")]
    assert embeddings[0].shape == (512,) and embeddings[1] is None  # container: no embedding


def _nested(levels: int) -> list:
    """A JSON value of ``levels`` nested arrays."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


BAD_TRIGGER = {
    "no-session": ("/get_commands_of_session", legacy_constants(), 400, "missing parameter 'session_id'"),
    "bad-session": ("/get_commands_of_session?session_id=a%20b", legacy_constants(), 400, "session_id must be"),
    "not-json": ("/get_commands_of_session?session_id=s1", b"{not json", 400, "not valid JSON"),
    "nan-json": ("/get_commands_of_session?session_id=s1", b'{"arm_radius": NaN}', 400, "not valid JSON"),
    "empty-body": ("/get_commands_of_session?session_id=s1", b"", 400, "empty"),
    "list-body": ("/get_commands_of_session?session_id=s1", b"[1, 2]", 422, "JSON object"),
    "missing-key": ("/get_commands_of_session?session_id=s1", legacy_constants(arm_radius=None) | {"arm_radius": "x"}, 422, "arm_radius"),
    "zero-range": ("/get_commands_of_session?session_id=s1", legacy_constants(rotation_range_as_pw=0), 422, "'rotation_range_as_pw' must be"),
    "huge-int-radius": ("/get_commands_of_session?session_id=s1",
                        b'{"arm_radius": 1' + b"0" * 400 + b', "rotation_range_as_deg": 130, "rotation_range_as_pw": 1400, '
                        b'"dist_min_as_pw": 1200, "dist_max_as_pw": 1900}', 422, "'arm_radius' must be 1 to 1,000,000 pixels"),
    "float-overflow-radius": ("/get_commands_of_session?session_id=s1", legacy_constants(arm_radius=1e308), 422, "'arm_radius' must be"),
    "subnormal-radius": ("/get_commands_of_session?session_id=s1", legacy_constants(arm_radius=1e-320), 422, "'arm_radius' must be"),
    "half-pixel-calib-width": ("/get_commands_of_session?session_id=s1",
                               legacy_constants() | {"camera": {**CAMERA, "calib_width": 0.5}, "zero_pw": 1475, "r_min_mm": 150, "r_max_mm": 450},
                               422, "'camera.calib_width' must be"),
    "nested-100k-arrays": ("/get_commands_of_session?session_id=s1", b"[" * 100_000, 400, "deeper than 32 levels"),
    "nested-30k-objects": ("/get_commands_of_session?session_id=s1", b'{"a":' * 30_000, 400, "deeper than 32 levels"),
    "nested-extra-key": ("/get_commands_of_session?session_id=s1",
                         json.dumps(legacy_constants() | {"extra": _nested(40)}).encode(), 400, "deeper than 32 levels"),
    "v1-nested-100k-arrays": ("/v1/arms/ARM001/sessions/s1/commands", b"[" * 100_000, 400, "deeper than 32 levels"),
    "v1-overview-nested": ("/v1/arms/ARM001/sessions/s1/overview.png", b"[" * 100_000 + b"]" * 100_000, 400, "deeper than 32"),
    "unknown-session": ("/get_commands_of_session?session_id=nope", legacy_constants(arm_id=None), 404, "nope"),
    "unknown-session-with-arm": ("/get_commands_of_session?session_id=nope&arm_id=ARM9", legacy_constants(arm_id="ARM9"), 404, "nope"),
    "body-arm-lone-surrogate": ("/get_commands_of_session?session_id=s1&arm_id=ARM001",
                                json.dumps(legacy_constants(arm_id="\ud800")).encode(), 422, "'arm_id' must be 1 to 64"),
    "body-arm-10k-chars": ("/get_commands_of_session?session_id=s1&arm_id=ARM001",
                           legacy_constants(arm_id="A" * 10_000), 422, "'arm_id' must be 1 to 64"),
    "body-arm-not-query-arm": ("/get_commands_of_session?session_id=s1&arm_id=ARM001", legacy_constants(arm_id="ARM002"),
                               400, "the body's arm_id 'ARM002' is not the arm of the request \\('ARM001'\\)"),
}


@pytest.mark.parametrize("case", list(BAD_TRIGGER), ids=list(BAD_TRIGGER))
def test_bad_trigger_is_a_problem(client, repository, case):
    url, body, status, detail = BAD_TRIGGER[case]
    if isinstance(body, dict):
        response = client.post(url, json=body)
    else:
        response = client.post(url, data=body, headers={"Content-Type": "application/json"})
    assert_problem(response, status, detail)
    assert repository.writes == 0


def test_trigger_without_arm_id_is_ambiguous_when_two_arms_share_the_session(client):
    for arm in ("ARM001", "ARM002"):
        assert client.post(f"/process_image?arm_id={arm}&session_id=shared&image_name=1200.jpg", data=PNG).status_code == 200
    response = client.post("/get_commands_of_session?session_id=shared", json=legacy_constants(arm_id=None))
    assert_problem(response, 400, "several arms .*ARM001, ARM002")


@pytest.mark.parametrize(
    ("method", "url", "status", "detail"),
    [
        ("GET", "/nowhere", 404, "no route /nowhere"),
        ("GET", "/process_image", 405, "allowed: OPTIONS, POST"),
        ("DELETE", "/get_commands_of_session", 405, "not allowed"),
        ("DELETE", "/v1/arms/A/sessions/S/commands", 405, "allowed: GET, HEAD, OPTIONS, POST"),
    ],
    ids=["404", "405-process-image", "405-trigger", "405-v1"],
)
def test_werkzeug_errors_are_problems(client, method, url, status, detail):
    assert_problem(client.open(url, method=method), status, detail)


def test_unexpected_error_is_an_opaque_500_with_request_id(tmp_path, caplog):
    settings = Settings.load(environ={}, data_dir=tmp_path)
    app = create_app(
        settings, detector=ExplodingDetector(), embedder=FakeEmbedder(), repository=FakeRepository(), archive=FakeArchive()
    )
    with caplog.at_level("ERROR"):
        response = app.test_client().post("/predict", data=PNG, headers={"X-Request-ID": "req-123"})
    body = assert_problem(response, 500, "request id req-123")
    assert "secret" not in response.get_data(as_text=True)
    assert body["request_id"] == "req-123"
    assert any("secret internal failure" in (r.exc_text or "") or r.exc_info for r in caplog.records)


@pytest.mark.parametrize("route", ["/predict", "/v1/predict"], ids=["predict", "v1-predict"])
def test_predict_raw_body(client, repository, route):
    response = client.post(route, data=PNG, headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["width_px"], body["height_px"]) == (320, 240)
    assert [d["class"] for d in body["detections"]] == ["item", "container"]
    assert repository.writes == 0


def test_predict_multipart_file_like_curl(client):
    response = client.post("/predict", data={"file": (io.BytesIO(PNG), "frame.png", "image/png")}, content_type="multipart/form-data")
    assert response.status_code == 200
    assert len(response.get_json()["detections"]) == 2


def test_predict_multipart_without_file_field(client):
    response = client.post("/predict", data={"image": (io.BytesIO(PNG), "frame.png")}, content_type="multipart/form-data")
    assert_problem(response, 400, "no field 'file'")


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": True, "detector": True, "embedder": True}


def test_arm_checkin_answers_the_http_era_client(client):
    response = client.get("/arm_checkin")
    assert response.status_code == 200 and response.mimetype == "application/json"
    # what the 2020 client does with the answer: json.loads(response.content)["arm_checkin"]
    assert json.loads(response.data)["arm_checkin"] == 1
    assert_problem(client.post("/arm_checkin"), 405, "allowed: GET, HEAD, OPTIONS")


def test_arm_checkin_reports_a_service_that_is_not_ready_in_the_clients_format(tmp_path):
    settings = Settings.load(environ={}, data_dir=tmp_path)
    app = create_app(
        settings, detector=FakeDetector(), embedder=FakeEmbedder(), repository=FakeRepository(ping_ok=False),
        archive=FakeArchive(),
    )
    response = app.test_client().get("/arm_checkin")
    assert response.status_code == 200  # a problem body has no "arm_checkin": the client would stop
    assert response.get_json() == {"arm_checkin": 0, "not_ready": ["database"]}


def test_readyz_fails_when_database_is_down(tmp_path):
    settings = Settings.load(environ={}, data_dir=tmp_path)
    app = create_app(
        settings, detector=FakeDetector(), embedder=FakeEmbedder(), repository=FakeRepository(ping_ok=False),
        archive=FakeArchive(),
    )
    assert_problem(app.test_client().get("/readyz"), 503, "database")


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_documents_every_registered_route(app, client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }
    registered = {
        (_openapi_path(rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert registered, "no routes registered"
    assert registered <= documented, f"undocumented routes: {sorted(registered - documented)}"
    assert documented <= registered, f"documented but not served: {sorted(documented - registered)}"


def test_openapi_references_resolve(client):
    document = client.get("/openapi.json").get_json()
    text = client.get("/openapi.json").get_data(as_text=True)
    for ref in set(re.findall(r'"\$ref":\s*"#/([^"]+)"', text)):
        node = document
        for part in ref.split("/"):
            assert part in node, f"dangling $ref #/{ref}"
            node = node[part]


@pytest.mark.parametrize("levels", [2, 32], ids=["camera-block", "at-the-limit"])
def test_nested_json_up_to_the_limit_is_read(client, levels):
    constants = legacy_constants() | {"extra": _nested(levels - 1)}
    response = client.post("/get_commands_of_session?session_id=s1", json=constants)
    assert_problem(response, 404, "s1")  # past the body: the session is unknown to the fake store


def _chunked(client, url: str, body: bytes, **kwargs):
    """POST ``body`` as a WSGI server hands on a ``Transfer-Encoding: chunked`` request:
    no Content-Length, the stream ended by the server (``wsgi.input_terminated``)."""
    return client.post(url, data=body, headers={"Transfer-Encoding": "chunked", **kwargs.pop("headers", {})},
                       environ_overrides={"wsgi.input_terminated": True}, **kwargs)


CHUNKED_TOO_LARGE = {
    "ingest": (INGEST, PNG + b"\x00" * MAX_BODY_BYTES, {"Content-Type": "image/png"}),
    "ingest-one-byte-over": (INGEST, PNG + b"\x00" * (MAX_BODY_BYTES + 1 - len(PNG)), {"Content-Type": "image/png"}),
    "trigger": ("/get_commands_of_session?session_id=s1", json.dumps(legacy_constants() | {"pad": "x" * MAX_BODY_BYTES}).encode(),
                {"Content-Type": "application/json"}),
    "v1-frame": ("/v1/arms/ARM001/sessions/s1/frames/1200.jpg", PNG + b"\x00" * MAX_BODY_BYTES, {}),
    "predict": ("/predict", PNG + b"\x00" * MAX_BODY_BYTES, {"Content-Type": "image/png"}),
}


@pytest.mark.parametrize("case", list(CHUNKED_TOO_LARGE), ids=list(CHUNKED_TOO_LARGE))
def test_chunked_body_over_the_limit_is_413_not_cut(client, repository, case):
    url, body, headers = CHUNKED_TOO_LARGE[case]
    assert len(body) > MAX_BODY_BYTES
    assert_problem(_chunked(client, url, body, headers=headers), 413, f"limit of {MAX_BODY_BYTES} bytes")
    assert repository.writes == 0


def test_chunked_body_within_the_limit_is_read_whole(client, repository):
    assert _chunked(client, INGEST, PNG, headers={"Content-Type": "image/png"}).status_code == 200
    padded = PNG + b"\x00" * (MAX_BODY_BYTES - len(PNG))  # exactly the limit: accepted (bytes after IEND are ignored)
    response = _chunked(client, INGEST.replace("1200.jpg", "1300.jpg"), padded, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(repository.frames) == 2
