"""Control-panel log shipping against a local HTTP server (http.server in a thread):
a working one, a blocked (slow) one and a dead one."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from flask import Flask, jsonify

from sorterbot_cloud import ops
from sorterbot_cloud.config import Settings
from sorterbot_cloud.ops.control_panel import ControlPanelShipper, control_panel_url, record_to_payload

log = logging.getLogger("sorterbot_cloud.test_control_panel")
log.setLevel(logging.INFO)  # the root logger may be at WARNING under pytest


class FakeControlPanel:
    """Records form-encoded POSTs to /log/; when ``blocked``, each request waits for ``release``."""

    def __init__(self, blocked: bool = False) -> None:
        self.records: list[dict[str, str]] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        if not blocked:
            self.release.set()
        panel = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                panel.arrived.set()
                panel.release.wait(30)
                panel.records.append({k: v[0] for k, v in parse_qs(body).items()} | {"_path": self.path})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def dead_host() -> str:
    """host:port where nothing listens (a port just bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def make_app(host: str) -> Flask:
    app = Flask("fake_service")
    ops.init_app(app, Settings(control_panel_host=host), configure_logs=False)

    @app.post("/process_image")
    def process_image():
        ops.bind_log_fields(arm_id="ARM001", session_id="S12")
        log.info("frame stored", extra={"log_type": "process_image", "duration_ms": 12.5})
        log.info("no log_type: not shipped")
        return jsonify(ok=True)

    return app


@pytest.fixture
def panel():
    p = FakeControlPanel()
    yield p
    p.stop()


def test_records_reach_the_control_panel(panel):
    app = make_app(panel.host)
    state = app.extensions["sorterbot_ops"]
    try:
        response = app.test_client().post("/process_image", headers={"X-Request-ID": "rq-7"})
        assert response.status_code == 200
        assert state.shipper.flush(10)
    finally:
        state.close()
    shipped = [r for r in panel.records if r["msg"] == "frame stored"]
    assert len(shipped) == 1
    record = shipped[0]
    assert record["_path"] == "/log/"
    assert json.loads(record["args"]) == {"arm_id": "ARM001", "session_id": "S12", "log_type": "process_image"}
    assert record["duration_ms"] == "12.5" and record["request_id"] == "rq-7"
    assert float(record["created"]) > 1.5e9 and record["levelname"] == "INFO"
    assert not any(r["msg"] == "no log_type: not shipped" for r in panel.records)


def test_blocked_control_panel_does_not_hold_requests():
    panel = FakeControlPanel(blocked=True)
    app = make_app(panel.host)
    state = app.extensions["sorterbot_ops"]
    client = app.test_client()
    try:
        statuses = [client.post("/process_image").status_code]
        assert panel.arrived.wait(10)  # the shipper is stuck inside a POST to the control panel ...
        statuses += [client.post("/process_image").status_code for _ in range(5)]
        assert not panel.release.is_set()  # ... and every request was answered meanwhile
        assert statuses == [200] * 6
    finally:
        panel.stop()
        state.close()


def test_full_queue_drops_and_counts():
    panel = FakeControlPanel(blocked=True)
    shipper = ControlPanelShipper(panel.host, queue_size=2, timeout_s=30)
    try:
        assert shipper.submit({"msg": "0"})
        assert panel.arrived.wait(10)  # record 0 is in flight, the queue is empty
        accepted = [shipper.submit({"msg": str(i)}) for i in range(1, 10)]
        assert accepted == [True, True] + [False] * 7
        assert shipper.dropped == 7
        panel.release.set()
        assert shipper.flush(10)
        assert sorted(r["msg"] for r in panel.records) == ["0", "1", "2"]
    finally:
        panel.stop()
        shipper.close()


def test_dead_control_panel_counts_failures_and_requests_succeed():
    app = make_app(dead_host())
    state = app.extensions["sorterbot_ops"]
    try:
        statuses = [app.test_client().post("/process_image").status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        assert state.shipper.flush(10)
        assert state.shipper.failed == 3 and state.shipper.sent == 0
    finally:
        state.close()


def test_metrics_count_control_panel_outcomes(panel):
    shipper = ControlPanelShipper(panel.host)
    try:
        from sorterbot_cloud.ops.metrics import CONTROL_PANEL_RECORDS

        before = CONTROL_PANEL_RECORDS.labels(outcome="sent")._value.get()
        shipper.submit({"msg": "x"})
        assert shipper.flush(10)
        assert CONTROL_PANEL_RECORDS.labels(outcome="sent")._value.get() == before + 1
    finally:
        shipper.close()


@pytest.mark.parametrize(
    "host, expected",
    [("panel:8000", "http://panel:8000/log/"), ("https://cp.example.com/", "https://cp.example.com/log/"),
     ("http://10.0.0.5:8000", "http://10.0.0.5:8000/log/")],
    ids=["host-port", "https-base", "http-ip"],
)
def test_control_panel_url(host, expected):
    assert control_panel_url(host) == expected


def test_control_panel_url_rejects_empty():
    with pytest.raises(ValueError, match="must not be empty"):
        control_panel_url("  ")


def test_record_without_session_is_rejected():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.arm_id, record.log_type = "A", "t"
    with pytest.raises(ValueError, match="record has no session_id"):
        record_to_payload(record)
