"""``sorterbot-cloud demo`` end to end with the shipped models (skipped until they exist).

Runs the real command in a subprocess, as ``make demo`` does: it renders a session in a
child process, starts the service on the embedded PostgreSQL, replays the session over
HTTP and scores the commands; the command exits 0 only when the session is sorted
correctly.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sorterbot_cloud.config import Settings

pytestmark = pytest.mark.slow


def _weights_present() -> bool:
    settings = Settings.load(environ={})
    return settings.detector_weights.is_file() and settings.embedder_weights.is_file()


@pytest.mark.skipif(not _weights_present(), reason="model weights not shipped yet (weights/detector.pt, weights/embedder.pt)")
def test_demo_sorts_the_simulated_session(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PG_CONN", "DATA_DIR", "SORTERBOT_CONFIG")}
    completed = subprocess.run(
        [sys.executable, "-m", "sorterbot_cloud.cli", "demo", "--out", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=1200, env=env,
    )
    # exit 0 = sorted correctly, 1 = ran end to end but not sorted correctly; anything else is a crash
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert (tmp_path / "demo" / "overview.png").is_file()
    assert "pick (" in completed.stdout
    assert "objects found / true : items 6/6, containers 3/3" in completed.stdout
    assert "sorted correctly     : yes" in completed.stdout
