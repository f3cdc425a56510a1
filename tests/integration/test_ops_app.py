"""ops through the real app (create_app, a real PostgreSQL; fakes for the models, which are
not under test): auth, request ids, per-stage metrics of real ingests and triggers, and
control-panel records of session requests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sorterbot_cloud.api import create_app
from tests.integration.conftest_service import (
    SESSION_FRAMES,
    FakeArchive,
    FakeDetector,
    FakeEmbedder,
    frame_bytes,
    legacy_constants,
)

TOKEN = "tok-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def samples(client, headers=None) -> dict:
    text = client.get("/metrics", headers=headers or {}).get_data(as_text=True)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snapshot, name, **labels) -> float:
    return snapshot.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def make_app(make_settings, repository):
    apps = []

    def make(**overrides):
        app = create_app(make_settings(**overrides), detector=FakeDetector(), embedder=FakeEmbedder(),
                         repository=repository, archive=FakeArchive())
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["sorterbot_ops"].close()


def post_session(client, headers=None, arm_id="ARM001", session_id="S1"):
    for name, rects in SESSION_FRAMES.items():
        response = client.post(
            f"/process_image?arm_id={arm_id}&session_id={session_id}&image_name={name}",
            data=frame_bytes(rects), content_type="image/png", headers=headers or {},
        )
        assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize(
    "method, path, headers, status",
    [("post", "/process_image?arm_id=A&session_id=S&image_name=1200.jpg", {}, 401),
     ("post", "/process_image?arm_id=A&session_id=S&image_name=1200.jpg", {"Authorization": "Bearer nope"}, 401),
     ("post", "/get_commands_of_session?session_id=S&arm_id=A", {}, 401),
     ("get", "/metrics", {}, 401),
     ("get", "/readyz", {}, 401),
     ("get", "/healthz", {}, 200),
     ("get", "/readyz", AUTH, 200),
     ("get", "/metrics", AUTH, 200),
     ("get", "/arm_checkin", {}, 401),
     ("get", "/arm_checkin", AUTH, 200)],
    ids=["ingest-no-token", "ingest-wrong-token", "trigger-no-token", "metrics-no-token", "readyz-no-token",
         "healthz-open", "readyz-token", "metrics-token", "checkin-no-token", "checkin-token"],
)
def test_token_guards_every_route_but_healthz(make_app, method, path, headers, status):
    client = make_app(api_token=TOKEN).test_client()
    response = getattr(client, method)(path, headers=headers, data=b"")
    assert response.status_code == status
    if status == 401:
        assert response.mimetype == "application/problem+json"
        assert response.get_json(force=True)["status"] == 401


def test_rejected_ingest_stores_nothing(make_app, repository):
    client = make_app(api_token=TOKEN).test_client()
    response = client.post("/process_image?arm_id=ARM001&session_id=S9&image_name=1200.jpg",
                           data=frame_bytes(SESSION_FRAMES["1200.jpg"]), content_type="image/png")
    assert response.status_code == 401
    assert list(repository.arm_ids_of_session("S9")) == []


def test_request_id_round_trip_with_the_real_app(make_app):
    client = make_app().test_client()
    assert client.get("/healthz", headers={"X-Request-ID": "lb-trace-1"}).headers["X-Request-ID"] == "lb-trace-1"
    error = client.post("/process_image?arm_id=ARM001&session_id=S1&image_name=nope", headers={"X-Request-ID": "e-2"})
    assert error.status_code == 400 and error.headers["X-Request-ID"] == "e-2"


def test_stage_and_route_metrics_of_a_session(make_app):
    client = make_app(api_token=TOKEN).test_client()
    before = samples(client, AUTH)
    post_session(client, AUTH)
    trigger = client.post("/get_commands_of_session?session_id=S1&arm_id=ARM001", json=legacy_constants(),
                          headers=AUTH)
    assert trigger.status_code == 200 and len(trigger.get_json()) == 4
    after = samples(client, AUTH)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    n_frames = len(SESSION_FRAMES)
    for stage in ("decode", "detect", "embed"):
        assert delta("sorterbot_stage_duration_seconds_count", stage=stage) == n_frames, stage
    assert delta("sorterbot_stage_duration_seconds_count", stage="store") >= n_frames
    assert delta("sorterbot_stage_duration_seconds_count", stage="trigger") == 1
    assert delta("sorterbot_http_requests_total", method="POST", route="/process_image", status="200") == n_frames
    assert delta("sorterbot_http_requests_total", method="POST", route="/get_commands_of_session", status="200") == 1


class RecordingControlPanel:
    def __init__(self) -> None:
        self.records: list[dict] = []
        panel = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                panel.records.append({k: v[0] for k, v in parse_qs(body).items()})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_session_requests_reach_the_control_panel(make_app):
    panel = RecordingControlPanel()
    try:
        app = make_app(control_panel_host=panel.host)
        post_session(app.test_client(), arm_id="ARM007", session_id="S77")
        assert app.extensions["sorterbot_ops"].shipper.flush(10)
    finally:
        panel.server.shutdown()
        panel.server.server_close()
    shipped = [json.loads(r["args"]) | {"duration_ms": float(r["duration_ms"])} for r in panel.records
               if r.get("duration_ms")]
    ingests = [r for r in shipped if r["log_type"] == "process_image"]
    assert len(ingests) == len(SESSION_FRAMES)
    assert all(r["arm_id"] == "ARM007" and r["session_id"] == "S77" and r["duration_ms"] > 0 for r in ingests)
