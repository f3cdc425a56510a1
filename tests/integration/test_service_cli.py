"""``replay`` over real HTTP against a running service, and ``overview`` from the database.

The service runs on a threaded Werkzeug server with the fake models (the models are not
under test); the CLI commands are invoked through click's runner.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sorterbot_cloud.api import create_app
from sorterbot_cloud.imaging import decode_image
from sorterbot_cloud.service_cli import overview, replay, running_server, session_frames
from tests.integration.conftest_service import SESSION_FRAMES, FakeDetector, FakeEmbedder, frame_bytes, legacy_constants


@pytest.fixture
def session_dir(tmp_path):
    folder = tmp_path / "rec_session"
    folder.mkdir()
    for name, rects in SESSION_FRAMES.items():
        (folder / name.replace(".jpg", ".png")).write_bytes(frame_bytes(rects))
    (folder / "notes.txt").write_text("not a frame")
    (folder / "ground_truth.json").write_text(
        json.dumps({"arm_id": "ARM007", "session_id": "rec_1", "arm_constants": legacy_constants("ARM007")})
    )
    return folder


@pytest.fixture
def app(settings, repository, archive):
    return create_app(settings, detector=FakeDetector(), embedder=FakeEmbedder(), repository=repository, archive=archive)


def test_session_frames_are_ordered_by_pulse_width(session_dir):
    (session_dir / "950.png").write_bytes(b"x")
    assert [p.name for p in session_frames(session_dir)] == ["950.png", "1200.png", "1400.png"]


def test_replay_posts_like_the_arm_and_prints_commands(app, repository, session_dir, tmp_path):
    json_out = tmp_path / "result.json"
    with running_server(app) as url:
        result = CliRunner().invoke(replay, [str(session_dir), "--url", url, "--json-out", str(json_out)])
    assert result.exit_code == 0, result.output
    assert "posted 2 frames (6 detections) for arm ARM007, session rec_1" in result.output
    wire = json.loads(result.output.strip().splitlines()[-1])
    assert len(wire) == 4
    assert repository.latest_commands("ARM007", "rec_1")["result"]["wire"] == wire
    assert json.loads(json_out.read_text())["wire"] == wire


def test_replay_reports_a_problem_clearly(app, session_dir):
    (session_dir / "1300.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with running_server(app) as url:
        result = CliRunner().invoke(replay, [str(session_dir), "--url", url])
    assert result.exit_code != 0
    assert "POST /process_image 1300.png answered 400" in result.output


def test_overview_command_writes_png_of_latest_result(app, session_dir, settings, tmp_path):
    with running_server(app) as url:
        assert CliRunner().invoke(replay, [str(session_dir), "--url", url]).exit_code == 0
    out = tmp_path / "ov.png"
    env = {"PG_CONN": settings.pg_conn, "DATA_DIR": str(settings.data_dir)}
    result = CliRunner(env=env).invoke(overview, ["--arm-id", "ARM007", "--session-id", "rec_1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert decode_image(out.read_bytes()).shape[1] > 320
    missing = CliRunner(env=env).invoke(overview, ["--arm-id", "ARM007", "--session-id", "nope", "--out", str(out)])
    assert missing.exit_code != 0 and "no commands stored" in missing.output
