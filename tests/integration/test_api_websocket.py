"""The later arm client's WebSocket protocol on ``/``, spoken by a real client to a real server.

The client is websocket-client, the library of the original ``sorterbot_raspberry`` client
(``websocket.create_connection``, ``send_binary``, ``recv``). The server is the real app on
a real loopback socket, under the threaded Werkzeug server of ``serve`` and, in one test,
under gunicorn with threads (the Docker image's command), on a real PostgreSQL built by
the migrations. The models are not under test: :class:`FakeDetector` and
:class:`FakeEmbedder` stand in for them.
"""

from __future__ import annotations

import json
import threading
import uuid
from types import SimpleNamespace

import pytest
import requests
import websocket

from sorterbot_cloud.api import create_app
from sorterbot_cloud.api.websocket import AFTER_DIR_NAME, max_message_bytes
from sorterbot_cloud.config import Settings
from sorterbot_cloud.service_cli import running_server
from tests.integration.conftest_service import (
    SESSION_FRAMES,
    FakeDetector,
    FakeEmbedder,
    frame_bytes,
    legacy_constants,
)
from tests.integration.test_scaleout import Replica

ARM = "ARM001"
#: What the original client sends as ``arm_constants``: its whole arm_config.yaml.
CLIENT_CONFIG = {**legacy_constants(ARM), "cloud_host": "127.0.0.1", "cloud_port": 5000,
                 "control_host": "127.0.0.1", "control_port": 8000}
#: ``MAX_BODY_BYTES`` of the size tests (the synthetic frames are about 2 kB of PNG).
SMALL_BODY_BYTES = 50_000


def frame_message(image_name: str, session_id: str, *, command: str = "recv_img_proc", arm_id=ARM,
                  image: bytes | None = None) -> bytes:
    """A frame as the client sends it: JSON header, marker, image bytes."""
    header = json.dumps({"command": command, "arm_id": arm_id, "session_id": session_id,
                         "image_name": image_name}).encode("utf8")
    image = frame_bytes(SESSION_FRAMES[image_name]) if image is None else image
    return b"___SPLIT___".join([header, image])


def trigger_message(session_id: str, constants=None, **extra) -> str:
    return json.dumps({"command": "get_commands_of_session", "session_id": session_id,
                       "arm_constants": CLIENT_CONFIG if constants is None else constants, **extra})


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://", 1)


def exchange(base_url: str, message: bytes | str, **connect) -> str:
    """One exchange as the client does it: connect, send, read the one reply, close."""
    ws = websocket.create_connection(ws_url(base_url), timeout=60, **connect)
    try:
        if isinstance(message, bytes):
            ws.send_binary(message)
        else:
            ws.send(message)
        return ws.recv()
    finally:
        ws.close()


def http_frame(base_url: str, image_name: str, session_id: str) -> None:
    response = requests.post(f"{base_url}/process_image",
                             params={"arm_id": ARM, "session_id": session_id, "image_name": image_name},
                             data=frame_bytes(SESSION_FRAMES[image_name]), headers={"Content-Type": "image/png"},
                             timeout=60)
    assert response.status_code == 200, response.text


def http_commands(base_url: str, session_id: str) -> list:
    response = requests.post(f"{base_url}/get_commands_of_session", params={"session_id": session_id},
                             json=CLIENT_CONFIG, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def n_detections(base_url: str, session_id: str) -> int:
    response = requests.post(f"{base_url}/v1/arms/{ARM}/sessions/{session_id}/commands", json=CLIENT_CONFIG,
                             timeout=60)
    assert response.status_code == 200, response.text
    return sum(len(obj["detections"]) for obj in response.json()["objects"])


@pytest.fixture
def serve(make_settings):
    """``serve(detector=None, **settings_overrides) -> base URL``: the app under the threaded
    Werkzeug server (with :class:`FakeDetector` unless another detector is given)."""
    stack = []

    def start(detector=None, idle_timeout_s=None, **overrides) -> str:
        settings = make_settings(**overrides)
        app = create_app(settings, detector=detector or FakeDetector(), embedder=FakeEmbedder())
        if idle_timeout_s is not None:
            app.config["WS_IDLE_TIMEOUT_S"] = idle_timeout_s
        server = running_server(app)
        url = server.__enter__()
        stack.append((server, app))
        return url

    yield start
    for server, app in reversed(stack):
        server.__exit__(None, None, None)
        app.extensions["sorterbot"].close()


@pytest.fixture(scope="module")
def shared(pg_server, migrated_template, tmp_path_factory):
    """One server for the tests that need no settings of their own (each uses its own
    session ids): its base URL, its settings and the commands of session ``S-kept``."""
    name = f"test_ws_{uuid.uuid4().hex[:16]}"
    settings = Settings.load(environ={}, pg_conn=pg_server.ensure_database(name, template=migrated_template),
                             data_dir=tmp_path_factory.mktemp("ws") / "data", pool_max_size=4)
    app = create_app(settings, detector=FakeDetector(), embedder=FakeEmbedder())
    try:
        with running_server(app) as base_url:
            yield SimpleNamespace(url=base_url, settings=settings, kept=ws_session(base_url, "S-kept"))
    finally:
        app.extensions["sorterbot"].close()
        pg_server.drop_database(name)


@pytest.fixture
def url(shared) -> str:
    return shared.url


def ws_session(base_url: str, session_id: str) -> list:
    for name in sorted(SESSION_FRAMES):
        assert exchange(base_url, frame_message(name, session_id)) == "true"
    return json.loads(exchange(base_url, trigger_message(session_id)))


def test_ws_session_gives_the_commands_of_the_same_frames_over_http(url):
    ws_commands = ws_session(url, "S-ws")
    for name in sorted(SESSION_FRAMES):
        http_frame(url, name, "S-http")
    n_items = sum(r.colour != "green" for rects in SESSION_FRAMES.values() for r in rects)
    assert len(ws_commands) == n_items  # every item gets a command
    assert ws_commands == http_commands(url, "S-http")
    assert http_commands(url, "S-ws") == ws_commands  # one store behind both protocols


def test_resending_a_frame_replaces_it(url):
    first = ws_session(url, "S-again")
    detections = n_detections(url, "S-again")
    assert exchange(url, frame_message("1200.jpg", "S-again")) == "true"
    assert n_detections(url, "S-again") == detections
    assert json.loads(exchange(url, trigger_message("S-again"))) == first


def test_one_connection_answers_several_messages_in_order(url):
    ws = websocket.create_connection(ws_url(url), timeout=60)
    try:
        for name in sorted(SESSION_FRAMES):
            ws.send_binary(frame_message(name, "S-one"))
            assert ws.recv() == "true"
        ws.send(json.dumps({"command": "get_status"}))
        assert json.loads(ws.recv()) == {"status": 1}
        ws.send(trigger_message("S-one"))
        commands = json.loads(ws.recv())
    finally:
        ws.close()
    assert commands and commands == http_commands(url, "S-one")


BAD_MESSAGES = [
    ("no-marker", b'{"command": "recv_img_proc"}' + b"\x89PNG", 400, "___SPLIT___"),
    ("header-not-json", b"{command: recv_img_proc}___SPLIT___\x89PNG", 400, "not valid JSON"),
    ("header-not-object", b"[1, 2]___SPLIT___\x89PNG", 400, "must be a JSON object"),
    ("unknown-frame-command", frame_message("1200.jpg", "S-bad", command="recv_img"), 400, "unknown command"),
    ("bad-arm-id", frame_message("1200.jpg", "S-bad", arm_id="../etc"), 400, "arm_id must be"),
    ("missing-arm-id", frame_message("1200.jpg", "S-bad", arm_id=None), 400, "missing parameter 'arm_id'"),
    ("bad-session-id", frame_message("1200.jpg", "S bad"), 400, "session_id must be"),
    ("empty-image", frame_message("1200.jpg", "S-bad", image=b""), 400, "image part is empty"),
    ("undecodable-image", frame_message("1200.jpg", "S-bad", image=b"not an image at all"), 400, None),
    ("after-undecodable", frame_message("1200.jpg", "S-bad", command="recv_img_after", image=b"nope"), 400, None),
    ("text-not-json", "get_commands_of_session", 400, "not valid JSON"),
    ("text-no-command", json.dumps({"session_id": "S-bad"}), 400, "needs a 'command'"),
    ("frame-command-as-text", json.dumps({"command": "recv_img_proc"}), 400, "frames go in binary messages"),
    ("trigger-bad-session-id", trigger_message("S/bad"), 400, "session_id must be"),
    ("trigger-no-constants", json.dumps({"command": "get_commands_of_session", "session_id": "S-kept"}), 400,
     "arm_constants"),
    ("trigger-constants-not-object", trigger_message("S-kept", constants=[1, 2]), 422, "JSON object"),
    ("trigger-constant-missing", trigger_message("S-kept", constants={k: v for k, v in CLIENT_CONFIG.items()
                                                                      if k != "arm_radius"}), 422, "arm_radius"),
    ("trigger-constant-not-number", trigger_message("S-kept", constants={**CLIENT_CONFIG, "arm_radius": "big"}), 422,
     "arm_radius"),
    ("trigger-unknown-session", trigger_message("S-none"), 404, "S-none"),
    ("trigger-other-arm", trigger_message("S-kept", arm_id="ARM002"), 400, "ARM002"),
]


@pytest.mark.parametrize(("message", "status", "detail_part"), [case[1:] for case in BAD_MESSAGES],
                         ids=[case[0] for case in BAD_MESSAGES])
def test_bad_message_gets_a_problem_reply_and_keeps_what_is_stored(shared, message, status, detail_part):
    url, before = shared.url, shared.kept
    ws = websocket.create_connection(ws_url(url), timeout=60)
    try:
        if isinstance(message, bytes):
            ws.send_binary(message)
        else:
            ws.send(message)
        problem = json.loads(ws.recv())
        ws.send(json.dumps({"command": "get_status"}))  # the connection is still usable
        assert json.loads(ws.recv()) == {"status": 1}
    finally:
        ws.close()
    assert problem["status"] == status, problem
    assert {"type", "title", "detail", "instance", "request_id"} <= set(problem)
    assert problem["instance"] == "/"
    if detail_part is not None:
        assert detail_part in problem["detail"], problem
    assert json.loads(exchange(url, trigger_message("S-kept"))) == before
    # a refused frame left nothing behind
    response = requests.post(f"{url}/get_commands_of_session", params={"session_id": "S-bad"}, json=CLIENT_CONFIG,
                             timeout=60)
    assert response.status_code == 404, response.text


@pytest.mark.parametrize(("ws_message", "http_call"), [
    (frame_message("1200.jpg", "S-p", arm_id="bad id"),
     lambda url: requests.post(f"{url}/process_image", params={"arm_id": "bad id", "session_id": "S-p",
                                                              "image_name": "1200.jpg"},
                               data=frame_bytes(SESSION_FRAMES["1200.jpg"]), timeout=60)),
    (frame_message("12x.jpg", "S-p", image=frame_bytes(SESSION_FRAMES["1200.jpg"])),
     lambda url: requests.post(f"{url}/process_image", params={"arm_id": ARM, "session_id": "S-p",
                                                              "image_name": "12x.jpg"},
                               data=frame_bytes(SESSION_FRAMES["1200.jpg"]), timeout=60)),
    (trigger_message("S-p", constants={**CLIENT_CONFIG, "rotation_range_as_deg": 1e9}),
     lambda url: requests.post(f"{url}/get_commands_of_session", params={"session_id": "S-p"},
                               json={**CLIENT_CONFIG, "rotation_range_as_deg": 1e9}, timeout=60)),
    (trigger_message("S-p"),
     lambda url: requests.post(f"{url}/get_commands_of_session", params={"session_id": "S-p"},
                               json=CLIENT_CONFIG, timeout=60)),
], ids=["bad-arm-id", "bad-image-name", "constant-out-of-range", "unknown-session"])
def test_problem_replies_match_the_http_routes(url, ws_message, http_call):
    ws_problem = json.loads(exchange(url, ws_message))
    response = http_call(url)
    assert response.headers["Content-Type"] == "application/problem+json"
    http_problem = response.json()
    fields = ("type", "title", "status", "detail")
    assert {k: ws_problem[k] for k in fields} == {k: http_problem[k] for k in fields}


def test_frame_after_sorting_is_kept_apart_from_the_session(shared):
    url = shared.url
    before = ws_session(url, "S-after")
    image = frame_bytes(SESSION_FRAMES["1400.jpg"])
    assert exchange(url, frame_message("1200.jpg", "S-after", command="recv_img_after", image=image)) == "true"
    stored = shared.settings.data_dir / AFTER_DIR_NAME / ARM / "S-after" / "1200.jpg"
    assert stored.read_bytes() == image
    # no detections stored, the frame of the session at that name is unchanged
    assert json.loads(exchange(url, trigger_message("S-after"))) == before
    archived = shared.settings.image_dir / ARM / "S-after" / "1200.jpg"
    assert archived.read_bytes() == frame_bytes(SESSION_FRAMES["1200.jpg"])
    # sent again: replaced, not duplicated
    assert exchange(url, frame_message("1200.jpg", "S-after", command="recv_img_after")) == "true"
    assert stored.read_bytes() == frame_bytes(SESSION_FRAMES["1200.jpg"])
    assert [p.name for p in stored.parent.iterdir()] == ["1200.jpg"]


def test_image_over_the_body_limit_gets_413_and_a_longer_message_closes_1009(serve):
    url = serve(max_body_bytes=SMALL_BODY_BYTES)
    ws = websocket.create_connection(ws_url(url), timeout=60)
    try:
        ws.send_binary(frame_message("1200.jpg", "S-big", image=b"\xff" * (SMALL_BODY_BYTES + 1)))
        problem = json.loads(ws.recv())
        assert problem["status"] == 413 and str(SMALL_BODY_BYTES) in problem["detail"], problem
        ws.send(json.dumps({"command": "get_status"}))
        assert json.loads(ws.recv()) == {"status": 1}

        ws.send_binary(frame_message("1200.jpg", "S-big", image=b"\xff" * (max_message_bytes(SMALL_BODY_BYTES) + 1)))
        opcode, data = ws.recv_data(control_frame=True)
    finally:
        ws.close()
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == 1009 and b"too big" in data[2:]
    # nothing of either was stored, and the service goes on
    assert exchange(url, frame_message("1200.jpg", "S-big")) == "true"
    assert n_detections(url, "S-big") == len(SESSION_FRAMES["1200.jpg"])


class BlockingFakeDetector(FakeDetector):
    """:class:`FakeDetector` that holds each call until :attr:`go` is set (to keep a slot busy)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.go = threading.Event(), threading.Event()

    def detect(self, image):
        self.entered.set()
        assert self.go.wait(60), "the test never released the detector"
        return super().detect(image)


def test_frames_share_the_bounded_ingest_line_of_the_http_routes(serve):
    detector = BlockingFakeDetector()
    url = serve(detector=detector, ingest_max_in_flight=1, ingest_max_queued=0)
    held = threading.Thread(target=http_frame, args=(url, "1400.jpg", "S-busy"))
    held.start()
    try:
        assert detector.entered.wait(60)  # the HTTP frame holds the only slot
        problem = json.loads(exchange(url, frame_message("1200.jpg", "S-busy")))
    finally:
        detector.go.set()
        held.join(60)
    assert problem["status"] == 503 and problem["reason"] == "queue_full", problem
    assert problem["command"] == "recv_img_proc" and problem["retry_after_s"] >= 1
    assert n_detections(url, "S-busy") == len(SESSION_FRAMES["1400.jpg"])  # the refused frame stored nothing
    assert exchange(url, frame_message("1200.jpg", "S-busy")) == "true"  # admitted once the slot is free
    assert n_detections(url, "S-busy") == len(SESSION_FRAMES["1200.jpg"]) + len(SESSION_FRAMES["1400.jpg"])


def test_an_idle_connection_is_closed_with_a_reason(serve):
    url = serve(idle_timeout_s=0.5)
    ws = websocket.create_connection(ws_url(url), timeout=30)
    try:
        opcode, data = ws.recv_data(control_frame=True)
    finally:
        ws.close()
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == 1000 and data[2:] == b"no message for 0.5 s"


def test_bearer_token_is_checked_at_the_handshake(serve):
    url = serve(api_token="s3cret-token")
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(url), timeout=30)
    assert refused.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as wrong:
        websocket.create_connection(ws_url(url), timeout=30, header=["Authorization: Bearer wrong"])
    assert wrong.value.status_code == 401
    reply = exchange(url, json.dumps({"command": "get_status"}), header=["Authorization: Bearer s3cret-token"])
    assert json.loads(reply) == {"status": 1}


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
def test_plain_http_to_the_root_answers_404_as_before(url, method):
    response = requests.request(method, url + "/", timeout=30)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    if method != "HEAD":
        assert response.json()["detail"] == "no route /; see /openapi.json for the routes"


def test_websocket_handshake_on_another_path_is_refused(url):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(url) + "/healthz", timeout=30)
    assert refused.value.status_code == 400


def test_ws_session_under_gunicorn_with_threads(pg_conn, tmp_path):
    replica = Replica("ws", pg_conn, tmp_path / "data", tmp_path)
    try:
        replica.wait_ready()
        ws_commands = ws_session(replica.url, "S-gunicorn")
        for name in sorted(SESSION_FRAMES):
            http_frame(replica.url, name, "S-gunicorn-http")
        assert ws_commands and ws_commands == http_commands(replica.url, "S-gunicorn-http")
        problem = json.loads(exchange(replica.url, b"no marker"))
        assert problem["status"] == 400
        assert requests.get(replica.url + "/healthz", timeout=30).status_code == 200  # still serving
    finally:
        replica.stop()
