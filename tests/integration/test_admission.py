"""Admission control of ingest (bounded queue, 503 + Retry-After) and ``bench load``.

The models are not under test: :class:`GatedFakeDetector` (a FAKE detector that holds each
frame until the test opens its gate) makes requests pile up deterministically, and
:class:`SlowFakeDetector` (a FAKE detector that sleeps) gives the load test's replicas a
detector slow enough for requests to overlap. Frames and detections are stored in a real
PostgreSQL (the ``pg_conn`` fixtures).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from sorterbot_cloud.api import create_app
from sorterbot_cloud.api.admission import EXTENSION_KEY
from sorterbot_cloud.config import Settings
from sorterbot_cloud.ops.metrics import REGISTRY
from sorterbot_cloud.service_cli import running_server
from tests.integration.conftest_service import FakeDetector, FakeEmbedder, Rect, frame_bytes, legacy_constants

#: Five frames of one session, 200 µs apart: rectangles per frame (items and one container).
FRAMES: dict[str, list[Rect]] = {
    "1000.png": [Rect("red", (40, 40, 70, 70)), Rect("blue", (150, 60, 180, 90)), Rect("green", (230, 150, 300, 220))],
    "1200.png": [Rect("blue", (60, 120, 90, 150)), Rect("red", (200, 40, 230, 70)), Rect("green", (20, 160, 90, 225))],
    "1400.png": [Rect("red", (130, 150, 160, 180)), Rect("yellow", (200, 30, 230, 60))],
    "1600.png": [Rect("yellow", (100, 100, 130, 130)), Rect("blue", (30, 30, 60, 60)),
                 Rect("green", (200, 150, 270, 220))],
    "1800.png": [Rect("red", (100, 30, 130, 60)), Rect("green", (180, 140, 260, 215))],
}


class GatedFakeDetector(FakeDetector):
    """FAKE detector: finds the palette rectangles, but only once :attr:`gate` is set.

    :attr:`entered` is released each time a frame reaches the detector, so a test can wait
    until a request holds its admission slot.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def detect(self, image):
        self.entered.release()
        if not self.gate.wait(60):
            raise RuntimeError("the test never opened the gate")
        return super().detect(image)


class SlowFakeDetector(FakeDetector):
    """FAKE detector: finds the palette rectangles after sleeping ``delay_s`` seconds."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def detect(self, image):
        time.sleep(self.delay_s)
        return super().detect(image)


def fake_app():
    """gunicorn entry point of a load-test replica: the real app, settings from the
    environment, :class:`SlowFakeDetector` (``FAKE_DETECT_DELAY_S``, default 0.05 s) and
    :class:`FakeEmbedder`."""
    delay_s = float(os.environ.get("FAKE_DETECT_DELAY_S", "0.05"))
    return create_app(Settings.load(), detector=SlowFakeDetector(delay_s), embedder=FakeEmbedder())


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("sorterbot_ingest_refused_total", {"reason": reason}) or 0.0


@pytest.fixture
def gated(make_settings, repository, archive):
    """A served app with admission (1 in flight, 2 queued, 30 s) and the gated FAKE detector."""

    def start(**limits):
        values = {"ingest_max_in_flight": 1, "ingest_max_queued": 2, "ingest_queue_timeout_s": 30.0, **limits}
        detector = GatedFakeDetector()
        app = create_app(make_settings(**values), detector=detector, embedder=FakeEmbedder(),
                         repository=repository, archive=archive)
        return app, detector

    servers = []

    def serve(**limits):
        app, detector = start(**limits)
        ctx = running_server(app)
        url = ctx.__enter__()
        servers.append((ctx, detector))
        return app, detector, url

    yield serve
    for ctx, detector in servers:
        detector.gate.set()
        ctx.__exit__(None, None, None)


def post(url: str, image_name: str, session_id: str = "S-adm", timeout_s: float = 60.0) -> requests.Response:
    return requests.post(f"{url}/process_image", params={"arm_id": "ARM001", "session_id": session_id,
                                                         "image_name": image_name},
                         data=frame_bytes(FRAMES[image_name]), headers={"Content-Type": "image/png"}, timeout=timeout_s)


def post_in_thread(url: str, image_name: str, answers: dict, session_id: str = "S-adm") -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.__setitem__(image_name, post(url, image_name, session_id)))
    thread.start()
    return thread


def wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def stored(repository, session_id: str = "S-adm") -> dict[str, int]:
    """image name -> detections stored, one entry per stored frame row."""
    rows = repository.session_frames("ARM001", session_id)
    names = [r["image_name"] for r in rows]
    assert len(names) == len(set(names)), f"a frame is stored twice: {names}"
    return {r["image_name"]: r["n_detections"] for r in rows}


def test_full_queue_answers_503_with_retry_after_and_every_accepted_frame_is_stored_once(gated, repository):
    app, detector, url = gated()
    control = app.extensions[EXTENSION_KEY]
    refused_before = _refused("queue_full")
    answers: dict[str, requests.Response] = {}
    first = post_in_thread(url, "1000.png", answers)
    assert detector.entered.acquire(timeout=20)  # 1000 holds the only slot
    queued = [post_in_thread(url, name, answers) for name in ("1200.png", "1400.png")]
    wait_for(lambda: control.queued == 2)

    for name in ("1600.png", "1800.png"):  # the line is full: refused at once
        response = post(url, name, timeout_s=10)
        assert response.status_code == 503, response.text
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert int(response.headers["Retry-After"]) >= 1
        body = response.json()
        assert body["status"] == 503 and body["reason"] == "queue_full"
        assert body["retry_after_s"] == int(response.headers["Retry-After"])
        assert "nothing was stored" in body["detail"]
    assert _refused("queue_full") - refused_before == 2
    assert "sorterbot_ingest_queued 2.0" in requests.get(f"{url}/metrics", timeout=10).text

    detector.gate.set()
    for thread in [first, *queued]:
        thread.join(60)
    assert {name: r.status_code for name, r in answers.items()} == {"1000.png": 200, "1200.png": 200, "1400.png": 200}
    expected = {name: len(rects) for name, rects in FRAMES.items()}
    assert stored(repository) == {n: expected[n] for n in ("1000.png", "1200.png", "1400.png")}  # refused: not stored
    assert control.in_flight == 0 and control.queued == 0

    for name in ("1600.png", "1800.png"):  # the client retries the refused frames
        assert post(url, name).status_code == 200
    assert stored(repository) == expected
    assert len(repository.load_session("ARM001", "S-adm")) == sum(expected.values())


def test_a_request_that_waits_past_the_timeout_is_refused_and_not_stored(gated, repository):
    app, detector, url = gated(ingest_max_queued=1, ingest_queue_timeout_s=0.3)
    refused_before = _refused("timeout")
    answers: dict[str, requests.Response] = {}
    first = post_in_thread(url, "1000.png", answers)
    assert detector.entered.acquire(timeout=20)
    response = post(url, "1200.png", timeout_s=20)  # waits in line, the slot never frees
    assert response.status_code == 503 and response.json()["reason"] == "timeout"
    assert int(response.headers["Retry-After"]) >= 1
    assert _refused("timeout") - refused_before == 1
    detector.gate.set()
    first.join(60)
    assert answers["1000.png"].status_code == 200
    assert stored(repository) == {"1000.png": len(FRAMES["1000.png"])}


def test_triggers_are_not_queued_behind_ingest(gated, repository):
    app, detector, url = gated(ingest_max_queued=0)
    detector.gate.set()
    for name in ("1000.png", "1200.png"):
        assert post(url, name).status_code == 200
    detector.gate.clear()
    while detector.entered.acquire(blocking=False):  # the two frames above went through
        pass
    answers: dict[str, requests.Response] = {}
    blocked = post_in_thread(url, "1400.png", answers, session_id="S-other")
    assert detector.entered.acquire(timeout=20)
    assert post(url, "1600.png", session_id="S-other", timeout_s=10).status_code == 503  # no line at all
    trigger = requests.post(f"{url}/get_commands_of_session", params={"session_id": "S-adm"},
                            json=legacy_constants(), timeout=30)
    assert trigger.status_code == 200 and len(trigger.json()) == 4  # 4 items on the two frames
    detector.gate.set()
    blocked.join(60)
    assert answers["1400.png"].status_code == 200


def test_admission_settings_from_the_environment_and_their_bounds(make_settings):
    settings = Settings.load(environ={"INGEST_MAX_IN_FLIGHT": "3", "INGEST_MAX_QUEUED": "5",
                                      "INGEST_QUEUE_TIMEOUT_S": "2.5"})
    assert (settings.ingest_max_in_flight, settings.ingest_max_queued, settings.ingest_queue_timeout_s) == (3, 5, 2.5)
    with pytest.raises(ValueError, match="ingest_max_in_flight"):
        make_settings(ingest_max_in_flight=-1)
    with pytest.raises(ValueError, match="ingest_queue_timeout_s"):
        make_settings(ingest_queue_timeout_s=0)


def test_zero_in_flight_turns_admission_control_off(make_settings, repository, archive):
    app = create_app(make_settings(ingest_max_in_flight=0), detector=FakeDetector(), embedder=FakeEmbedder(),
                     repository=repository, archive=archive)
    assert app.extensions[EXTENSION_KEY] is None
    response = app.test_client().post("/process_image?arm_id=ARM001&session_id=S-off&image_name=1000.png",
                                      data=frame_bytes(FRAMES["1000.png"]), content_type="image/png")
    assert response.status_code == 200


# --------------------------------------------------------------------------- bench load
def write_sessions(root: Path, n_scenes: int = 2) -> Path:
    """Session folders of synthetic PNG frames with their arm constants (``ground_truth.json``)."""
    names = sorted(FRAMES)
    for k in range(n_scenes):
        folder = root / f"scene{k}"
        folder.mkdir(parents=True)
        for i, name in enumerate(names):  # scene k: frame i shows the rectangles of frame i + k
            (folder / name).write_bytes(frame_bytes(FRAMES[names[(i + k) % len(names)]]))
        (folder / "ground_truth.json").write_text(json.dumps({"arm_constants": legacy_constants()}))
    return root


@pytest.mark.slow
def test_bench_load_against_served_replicas_passes_its_consistency_check(pg_conn, tmp_path, monkeypatch):
    from sorterbot_cloud.cli import main

    monkeypatch.setenv("FAKE_DETECT_DELAY_S", "0.05")
    sessions = write_sessions(tmp_path / "sessions")
    out = tmp_path / "load.json"
    result = CliRunner().invoke(main, [
        "bench", "load", "--serve", "--app", "tests.integration.test_admission:fake_app()", "--pg-conn", pg_conn,
        "--sessions-dir", str(sessions), "--scenes", "2", "--arms", "1,3", "--frames-per-arm", "4", "--rate", "20",
        "--workers", "1", "--threads", "6", "--max-in-flight", "1", "--max-queued", "1", "--duration-limit-s", "60",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["check"]["ok"] and report["check"]["n_sessions"] == 4
    assert [r["n_arms"] for r in report["runs"]] == [1, 3]
    for run, n_arms in zip(report["runs"], (1, 3), strict=True):
        assert run["frames_stored"] == 4 * n_arms and run["frames_failed"] == 0
        assert run["status_counts"]["ingest"]["200"] == 4 * n_arms
        assert run["status_counts"]["trigger"] == {"200": n_arms}
        assert run["ingest_ms"]["n"] == 4 * n_arms and run["ingest_ms"]["p50"] > 0
    assert report["machine"]["cpu_count"] >= 1
    assert "consistency: every session equals the sequential run" in result.output


@pytest.mark.slow
def test_consistency_check_fails_when_a_frame_is_deleted_behind_its_back(pg_conn, tmp_path, monkeypatch):
    import psycopg

    from sorterbot_cloud.db import Database, Repository
    from sorterbot_cloud.load_test import check_consistency, load_scene, run_load, run_reference, started_replicas

    monkeypatch.setenv("FAKE_DETECT_DELAY_S", "0.0")
    scenes = [load_scene(p, 3) for p in sorted(write_sessions(tmp_path / "sessions").iterdir())]
    with started_replicas(1, workers=1, threads=4, app="tests.integration.test_admission:fake_app()",
                          pg_conn=pg_conn, data_dir=tmp_path / "served") as (replicas, conninfo):
        url = replicas[0].url
        fig = run_load(scenes, [url], 2, 20.0, "t1", duration_limit_s=60)
        references = run_reference(scenes, url, "t1")
    with Database(conninfo, max_size=2, run_migrations=False) as database:
        repository = Repository(database.pool)
        assert check_consistency(fig["arms"], references, scenes, repository)["ok"]
        victim = fig["arms"][1]
        lost = scenes[1].frames[0][0]
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM frames WHERE arm_id = %s AND session_id = %s AND image_name = %s",
                         (victim["arm_id"], victim["session_id"], lost))
        check = check_consistency(fig["arms"], references, scenes, repository)
    assert not check["ok"]
    assert any(f"session {victim['session_id']}: frames not stored: {lost}" in p for p in check["problems"])
    assert all(victim["session_id"] in p for p in check["problems"])  # the other arm's session still matches


def test_a_released_slot_goes_to_the_longest_waiting_request():
    from sorterbot_cloud.api.admission import AdmissionControl

    control = AdmissionControl(max_in_flight=1, max_queued=3, queue_timeout_s=30.0)
    assert control.acquire() is None
    order: list[int] = []

    def wait(k: int) -> None:
        assert control.acquire() is None
        order.append(k)
        control.release(0.01)

    threads = []
    for k in range(3):  # they join the line in this order
        threads.append(threading.Thread(target=wait, args=(k,)))
        threads[-1].start()
        wait_for(lambda k=k: control.queued == k + 1)
    refusal = control.acquire()  # the line is full
    assert refusal is not None and refusal.reason == "queue_full" and refusal.queued == 3
    control.release(0.01)
    for thread in threads:
        thread.join(30)
    assert order == [0, 1, 2]
    assert control.in_flight == 0 and control.queued == 0


@pytest.mark.parametrize(("url", "allow_remote", "ok"), [
    ("http://127.0.0.1:5000/", False, True),
    ("http://[::1]:5000", False, True),
    ("http://10.1.2.3:5000", False, False),
    ("http://10.1.2.3:5000", True, True),
    ("ftp://127.0.0.1/", False, False),
], ids=["ipv4-loopback", "ipv6-loopback", "private-refused", "private-allowed", "not-http"])
def test_bench_load_refuses_urls_off_this_machine(url, allow_remote, ok):
    import click

    from sorterbot_cloud.load_test import check_url

    if ok:
        assert check_url(url, allow_remote) == url.rstrip("/")
    else:
        with pytest.raises(click.BadParameter, match="loopback|not an http"):
            check_url(url, allow_remote)
