"""``sorterbot-cloud serve`` stops cleanly on SIGTERM and SIGINT (a real subprocess).

The server runs with the shipped models and its own embedded PostgreSQL under a
temporary data directory; after the signal the process must exit by itself, having
answered the request in flight, and the embedded postmaster must be gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from sorterbot_cloud.config import PROJECT_ROOT
from tests.integration.conftest_service import SESSION_FRAMES, frame_bytes

#: How long the subprocess may take to load the models and start its database (seconds).
START_TIMEOUT_S = 180.0
#: How long it may take to exit after the signal (seconds).
STOP_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _postmaster_pid(pg_data_dir: Path) -> int:
    return int((pg_data_dir / "postmaster.pid").read_text().splitlines()[0])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_serve_and_its_embedded_postgres(tmp_path, signum):
    port = _free_port()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("PG_CONN", "API_TOKEN", "MODE", "SORTERBOT_CONFIG")}
    env.update(DATA_DIR=str(data_dir), TORCH_THREADS="1", OMP_NUM_THREADS="1", LOG_JSON="0")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sorterbot_cloud.cli", "serve", "--port", str(port)],
                                cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    postmaster = None
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "serve did not become ready:\n" + log_path.read_text()
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        postmaster = _postmaster_pid(data_dir / "pgdata")
        assert _alive(postmaster)

        answers: list = []
        in_flight = threading.Thread(target=lambda: answers.append(requests.post(
            f"{url}/process_image?arm_id=ARM001&session_id=s1&image_name=1200.jpg",
            data=frame_bytes(SESSION_FRAMES["1200.jpg"]), headers={"Content-Type": "image/png"}, timeout=60)))
        in_flight.start()
        time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(timeout=STOP_TIMEOUT_S) == 0, log_path.read_text()
        in_flight.join(timeout=60)
        assert answers and answers[0].status_code == 200, log_path.read_text()
        stop_deadline = time.monotonic() + 10  # pg_ctl stop waits for the postmaster; allow it to finish exiting
        while _alive(postmaster) and time.monotonic() < stop_deadline:
            time.sleep(0.1)
        assert not _alive(postmaster), "the embedded PostgreSQL is still running:\n" + log_path.read_text()
        assert not (data_dir / "pgdata" / "postmaster.pid").exists()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if postmaster is not None and _alive(postmaster):
            os.kill(postmaster, signal.SIGTERM)  # leave no server behind a failed test
