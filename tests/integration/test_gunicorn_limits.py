"""gunicorn's request limits answer with the service's JSON problem details.

gunicorn runs with the Docker image's command (its CMD, read from the Dockerfile: the
config module :mod:`sorterbot_cloud.ops.gunicorn_conf`, one worker, threads), on
loopback, serving the real app on a real PostgreSQL; the models are not under test, so
:func:`tests.integration.test_scaleout.fake_app` gives it :class:`FakeDetector` and
:class:`FakeEmbedder`. Requests are written on raw sockets, so that exactly the bytes
under test reach the server. The same limits of Werkzeug's development server (``serve``)
are checked too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import websocket

from sorterbot_cloud.api import create_app
from sorterbot_cloud.ops import gunicorn_conf
from sorterbot_cloud.service_cli import running_server
from tests.integration.conftest_service import FakeDetector, FakeEmbedder
from tests.integration.test_scaleout import free_port
from tests.unit.test_ops_deploy_files import dockerfile_instructions

ROOT = Path(__file__).resolve().parents[2]


def docker_command(port: int) -> list[str]:
    """The Dockerfile's CMD, bound to loopback and serving :func:`fake_app`."""
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    cmd = json.loads([args for keyword, args in instructions if keyword == "CMD"][-1])
    assert cmd[0] == "gunicorn" and "--config" in cmd
    cmd[cmd.index("--bind") + 1] = f"127.0.0.1:{port}"
    cmd[-1] = "tests.integration.test_scaleout:fake_app()"
    return [sys.executable, "-m", "gunicorn", *cmd[1:]]


def raw_exchange(port: int, request: bytes, timeout_s: float = 30.0) -> tuple[int, dict, bytes]:
    """Write ``request`` on a new connection; return (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
                length = int(headers.get("Content-Length", "-1"))
                if 0 <= length <= len(body):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


def get(path: str, headers: list[str] = ()) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close"])
            + "\r\n\r\n").encode("latin-1")


#: (request, status) per limit of :mod:`gunicorn_conf`, one step over it.
OVER_LIMITS = {
    "long-url": (get("/healthz?pad=" + "a" * gunicorn_conf.limit_request_line), 414),
    "too-many-headers": (get("/healthz", [f"X-Pad-{i}: {i}" for i in range(gunicorn_conf.limit_request_fields + 1)]),
                         431),
    "long-header": (get("/healthz", ["X-Pad: " + "a" * gunicorn_conf.limit_request_field_size]), 431),
    "malformed-request-line": (b"GET /healthz\r\n\r\n", 400),
}


@pytest.fixture(scope="module")
def gunicorn_port(pg_server, migrated_template, tmp_path_factory):
    """Port of a gunicorn started with the Docker image's command (on its own database)."""
    name = f"test_limits_{os.urandom(8).hex()}"
    pg_conn = pg_server.ensure_database(name, template=migrated_template)
    tmp = tmp_path_factory.mktemp("gunicorn")
    port = free_port()
    env = {**os.environ, "MODE": "local", "PG_CONN": pg_conn, "DATA_DIR": str(tmp / "data"), "POOL_MAX_SIZE": "2",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("API_TOKEN", "CONTROL_PANEL_HOST", "SORTERBOT_CONFIG"):
        env.pop(key, None)
    log_path = tmp / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(docker_command(port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "gunicorn not ready:\n" + log_path.read_text()[-4000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.2)
        yield port
        assert process.poll() is None, "gunicorn died:\n" + log_path.read_text()[-4000:]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        pg_server.drop_database(name)


def assert_problem(status: int, headers: dict, body: bytes, expected_status: int) -> dict:
    assert status == expected_status, body
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == expected_status
    assert set(problem) >= {"type", "title", "detail"} and problem["detail"]
    assert b"<html" not in body.lower()
    return problem


@pytest.mark.slow
@pytest.mark.parametrize(("request_bytes", "expected_status"), OVER_LIMITS.values(), ids=OVER_LIMITS.keys())
def test_gunicorn_refusals_are_problem_json_and_serving_goes_on(gunicorn_port, request_bytes, expected_status):
    status, headers, body = raw_exchange(gunicorn_port, request_bytes)
    problem = assert_problem(status, headers, body, expected_status)
    if expected_status == 414:
        assert str(gunicorn_conf.limit_request_line) in problem["detail"]
    # the worker goes on serving
    assert raw_exchange(gunicorn_port, get("/healthz"))[0] == 200


@pytest.mark.slow
def test_gunicorn_within_the_limits_still_serves_the_app(gunicorn_port):
    at_limit = ["X-Pad-%d: %d" % (i, i) for i in range(gunicorn_conf.limit_request_fields - 3)]  # + Host, Connection
    assert raw_exchange(gunicorn_port, get("/healthz", at_limit))[0] == 200
    status, headers, body = raw_exchange(gunicorn_port, get("/no-such-route"))
    assert_problem(status, headers, body, 404)  # the app's own problem answers are unchanged
    ws = websocket.create_connection(f"ws://127.0.0.1:{gunicorn_port}/", timeout=30)  # the worker serves WebSocket
    try:
        ws.send(json.dumps({"command": "get_status"}))
        assert json.loads(ws.recv()) == {"status": 1}
    finally:
        ws.close()


#: Werkzeug's development server (http.server): request and header lines up to 65,536
#: bytes, at most 100 header fields.
DEV_OVER_LIMITS = {
    "long-url": (get("/healthz?pad=" + "a" * 65_537), 414),
    "too-many-headers": (get("/healthz", [f"X-Pad-{i}: {i}" for i in range(101)]), 431),
    "long-header": (get("/healthz", ["X-Pad: " + "a" * 65_537]), 431),
}


@pytest.fixture(scope="module")
def dev_port(pg_server, migrated_template, tmp_path_factory):
    from sorterbot_cloud.config import Settings

    name = f"test_dev_limits_{os.urandom(8).hex()}"
    settings = Settings.load(environ={}, pg_conn=pg_server.ensure_database(name, template=migrated_template),
                             data_dir=tmp_path_factory.mktemp("dev") / "data", pool_max_size=2)
    app = create_app(settings, detector=FakeDetector(), embedder=FakeEmbedder())
    try:
        with running_server(app) as url:
            yield int(url.rsplit(":", 1)[1])
    finally:
        app.extensions["sorterbot"].close()
        pg_server.drop_database(name)


@pytest.mark.parametrize(("request_bytes", "expected_status"), DEV_OVER_LIMITS.values(), ids=DEV_OVER_LIMITS.keys())
def test_dev_server_refusals_are_problem_json(dev_port, request_bytes, expected_status):
    status, headers, body = raw_exchange(dev_port, request_bytes)
    assert_problem(status, headers, body, expected_status)
    assert raw_exchange(dev_port, get("/healthz"))[0] == 200
