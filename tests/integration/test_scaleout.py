"""Scale-out: two service processes (gunicorn, as in the Docker image) on one PostgreSQL.

The frames of one session are posted alternately to both replicas; the session trigger
sent to either gives identical commands. Each replica has its own DATA_DIR, so nothing
is shared but the database. The models are not under test: the replicas run the real
app with :class:`FakeDetector` / :class:`FakeEmbedder` through :func:`fake_app`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest_service import FakeDetector, FakeEmbedder, Rect, frame_bytes, legacy_constants

ROOT = Path(__file__).resolve().parents[2]

#: A four-frame session, 200 µs apart (no object seen twice): 2 item colours, 1 container per frame.
FRAMES: dict[str, list[Rect]] = {
    "1000.jpg": [Rect("red", (40, 40, 70, 70)), Rect("blue", (150, 60, 180, 90)), Rect("green", (230, 150, 300, 220))],
    "1200.jpg": [Rect("blue", (60, 120, 90, 150)), Rect("red", (200, 40, 230, 70)), Rect("green", (20, 160, 90, 225))],
    "1400.jpg": [Rect("red", (130, 150, 160, 180)), Rect("yellow", (200, 30, 230, 60))],
    "1600.jpg": [Rect("yellow", (100, 100, 130, 130)), Rect("blue", (30, 30, 60, 60)),
                 Rect("green", (200, 150, 270, 220))],
}


def fake_app():
    """gunicorn entry point of a replica: the real app, settings from the environment, fake models."""
    from sorterbot_cloud.api import create_app
    from sorterbot_cloud.config import Settings

    return create_app(Settings.load(), detector=FakeDetector(), embedder=FakeEmbedder())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Replica:
    """One gunicorn process serving :func:`fake_app` on 127.0.0.1."""

    def __init__(self, name: str, pg_conn: str, data_dir: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        env = {**os.environ, "MODE": "local", "PG_CONN": pg_conn, "DATA_DIR": str(data_dir), "POOL_MAX_SIZE": "2",
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        for key in ("API_TOKEN", "CONTROL_PANEL_HOST", "SORTERBOT_CONFIG"):
            env.pop(key, None)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--threads", "2",
             "--timeout", "120", "tests.integration.test_scaleout:fake_app()"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"replica exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                if requests.get(self.url + "/readyz", timeout=10).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # worker still loading the app
                pass
            time.sleep(0.2)
        raise RuntimeError(f"replica not ready after {timeout_s} s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


@pytest.fixture
def replicas(pg_conn, tmp_path):
    started = [Replica(name, pg_conn, tmp_path / name, tmp_path) for name in ("a", "b")]
    try:
        for replica in started:  # both start at once: migrations run under an advisory lock
            replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


def post_frame(replica: Replica, image_name: str, arm_id: str = "ARM001", session_id: str = "S-scale") -> dict:
    response = requests.post(
        f"{replica.url}/process_image",
        params={"arm_id": arm_id, "session_id": session_id, "image_name": image_name},
        data=frame_bytes(FRAMES[image_name]), headers={"Content-Type": "image/png"}, timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def trigger(replica: Replica, session_id: str = "S-scale") -> list:
    response = requests.post(f"{replica.url}/get_commands_of_session", params={"session_id": session_id},
                             json=legacy_constants(), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def detail(replica: Replica, arm_id: str = "ARM001", session_id: str = "S-scale") -> dict:
    response = requests.post(f"{replica.url}/v1/arms/{arm_id}/sessions/{session_id}/commands",
                             json=legacy_constants(), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_frames_on_two_replicas_give_identical_commands(replicas):
    a, b = replicas
    names = sorted(FRAMES)
    for i, name in enumerate(names):  # alternate: a, b, a, b
        post_frame(a if i % 2 == 0 else b, name)

    commands_a, commands_b = trigger(a), trigger(b)
    n_items = sum(r.colour != "green" for rects in FRAMES.values() for r in rects)
    assert len(commands_a) == n_items  # every item of every frame, whichever replica took it
    assert commands_a == commands_b
    assert trigger(a) == commands_a  # deterministic on a replica too

    detail_a, detail_b = detail(a), detail(b)
    assert detail_a["commands"] == detail_b["commands"]
    assert detail_a["wire"] == commands_a
    assert [o["object_id"] for o in detail_a["objects"]] == [o["object_id"] for o in detail_b["objects"]]

    # each replica archived only the frames it was sent: no shared local state
    stored_a = sorted(p.name for p in a.data_dir.rglob("*.jpg"))
    stored_b = sorted(p.name for p in b.data_dir.rglob("*.jpg"))
    assert stored_a == names[0::2] and stored_b == names[1::2]


@pytest.mark.slow
def test_reposting_a_frame_to_the_other_replica_replaces_it(replicas):
    a, b = replicas
    for i, name in enumerate(sorted(FRAMES)):
        post_frame(a if i % 2 == 0 else b, name)
    before = trigger(a)
    post_frame(b, "1000.jpg")  # first taken by a; now again through b
    assert trigger(a) == before and trigger(b) == before
