"""Ingest over HTTP through the real app on a real PostgreSQL (fake models).

Covers: stored frame, detections and embeddings; the archive; idempotent re-posts;
bad input answering 4xx problems and leaving stored data unchanged; four arms posting
at once over real HTTP losing and duplicating nothing.
"""

from __future__ import annotations

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from werkzeug.serving import make_server

from sorterbot_cloud.api import create_app
from sorterbot_cloud.errors import ServiceUnavailable, UnknownSession
from sorterbot_cloud.imaging import MAX_ASPECT_RATIO, encode_png
from sorterbot_cloud.structures import CONTAINER_CLASS_ID, ITEM_CLASS_ID
from tests.integration.conftest_service import FakeDetector, FakeEmbedder, Rect, frame_bytes

FRAME = [Rect("red", (10, 10, 40, 40)), Rect("blue", (60, 20, 90, 50)), Rect("green", (150, 100, 250, 200))]
OTHER_FRAME = [Rect("yellow", (200, 20, 230, 50))]


@pytest.fixture
def app(make_settings, repository, archive):
    return create_app(
        make_settings(max_body_bytes=300_000),
        detector=FakeDetector(),
        embedder=FakeEmbedder(),
        repository=repository,
        archive=archive,
    )


@pytest.fixture
def client(app):
    return app.test_client()


def ingest(client, data, arm="ARM001", session="s1", image="1200.jpg", **headers):
    return client.post(
        f"/process_image?arm_id={arm}&session_id={session}&image_name={image}",
        data=data,
        headers={"Content-Type": "image/png", **headers},
    )


def snapshot(repository, arm="ARM001", session="s1"):
    """What is stored for a session: (image, class, box, score, embedding bytes) per detection."""
    return [
        (d.image_name, d.class_id, tuple(np.round(d.box_xyxy, 2)), round(d.score, 4),
         None if d.embedding is None else d.embedding.tobytes())
        for d in repository.load_session(arm, session)
    ]


def test_ingest_stores_frame_detections_embeddings_and_archive(client, repository, archive):
    data = frame_bytes(FRAME)
    response = ingest(client, data)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["n_items"], body["n_containers"]) == (2, 1)
    stored = repository.load_session("ARM001", "s1")
    assert sorted(d.class_id for d in stored) == [ITEM_CLASS_ID, ITEM_CLASS_ID, CONTAINER_CLASS_ID]
    for d in stored:
        assert (d.width_px, d.height_px, d.frame_pw0) == (320, 240, 1200.0)
        if d.class_id == ITEM_CLASS_ID:
            assert d.embedding.shape == (512,)
            assert np.linalg.norm(d.embedding) == pytest.approx(1.0, abs=1e-5)
        else:
            assert d.embedding is None
    assert archive.get(body["image_uri"]) == data
    frames = repository.session_frames("ARM001", "s1")
    assert [f["image_name"] for f in frames] == ["1200.jpg"]
    assert frames[0]["image_uri"] == body["image_uri"]


def test_reposting_a_frame_replaces_it_and_never_duplicates(client, repository):
    first = ingest(client, frame_bytes(FRAME)).get_json()
    again = ingest(client, frame_bytes(FRAME)).get_json()
    assert again["frame_id"] == first["frame_id"]
    assert len(repository.load_session("ARM001", "s1")) == 3
    replaced = ingest(client, frame_bytes(OTHER_FRAME)).get_json()
    assert replaced["frame_id"] == first["frame_id"]
    stored = repository.load_session("ARM001", "s1")
    assert [(d.class_id, tuple(d.box_xyxy)) for d in stored] == [(ITEM_CLASS_ID, (200.0, 20.0, 231.0, 51.0))]


def test_v1_put_frame_is_the_same_ingest(client, repository):
    response = client.put("/v1/arms/ARM001/sessions/s1/frames/1250.jpg", data=frame_bytes(FRAME), headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    assert response.get_json()["image_name"] == "1250.jpg"
    assert {d.image_name for d in repository.load_session("ARM001", "s1")} == {"1250.jpg"}


BAD_REQUESTS = {
    "empty-body": dict(data=b""),
    "truncated": dict(data=frame_bytes(OTHER_FRAME)[:300]),
    "not-image": dict(data=b"%PDF-1.4 not a frame"),
    "wrong-type": dict(data=frame_bytes(OTHER_FRAME), content_type="text/plain"),
    "too-large": dict(data=b"\x89PNG\r\n\x1a\n" + b"\x00" * 400_000),
    "bad-image-name": dict(data=frame_bytes(OTHER_FRAME), image="../1200.jpg"),
    "bad-session-id": dict(data=frame_bytes(OTHER_FRAME), session="s 1"),
    "image-name-trailing-newline": dict(data=frame_bytes(OTHER_FRAME), image="1200.jpg\n"),
    "session-id-trailing-newline": dict(data=frame_bytes(OTHER_FRAME), session="s1\n"),
    "arm-id-trailing-newline": dict(data=frame_bytes(OTHER_FRAME), arm="ARM001\n"),
    "absurd-aspect-ratio": dict(data=encode_png(np.zeros((40960, 40, 3), np.uint8))),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_rejected_ingest_leaves_stored_data_unchanged(client, repository, archive, case):
    original = frame_bytes(FRAME)
    body = ingest(client, original).get_json()
    before = snapshot(repository)
    params = dict(BAD_REQUESTS[case])
    data = params.pop("data")
    content_type = params.pop("content_type", "image/png")
    response = client.post(
        "/process_image",
        query_string={"arm_id": params.get("arm", "ARM001"), "session_id": params.get("session", "s1"),
                      "image_name": params.get("image", "1200.jpg")},
        data=data,
        headers={"Content-Type": content_type},
    )
    assert 400 <= response.status_code < 500
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["detail"]
    assert snapshot(repository) == before
    assert repository.arm_ids_of_session("s1") == ["ARM001"]
    assert archive.get(body["image_uri"]) == original
    assert [p.relative_to(archive.root).as_posix() for p in archive.root.rglob("*") if p.is_file()] == ["ARM001/s1/1200.jpg"]


def test_four_arms_posting_at_once_lose_and_duplicate_nothing(app, repository):
    """4 arms x 6 frames (each posted twice) over real HTTP on a threaded server."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/process_image"
    arms = [f"ARM00{i}" for i in range(1, 5)]
    pulse_widths = [1000 + 50 * k for k in range(6)]
    # frame k of arm i holds i+1 items and one container, so counts identify frames
    frames = {
        (arm, pw): frame_bytes([Rect("red", (10 + 40 * j, 10, 35 + 40 * j, 35)) for j in range(i + 1)] + [Rect("green", (150, 120, 260, 220))])
        for i, arm in enumerate(arms)
        for pw in pulse_widths
    }
    jobs = [(arm, pw) for _ in range(2) for pw in pulse_widths for arm in arms]

    def post(job):
        arm, pw = job
        with requests.Session() as http:
            response = http.post(url, params={"arm_id": arm, "session_id": "shared", "image_name": f"{pw}.jpg"},
                                 data=frames[job], headers={"Content-Type": "image/png"}, timeout=60)
        return response.status_code

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = list(pool.map(post, jobs))
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert statuses == [200] * len(jobs)
    for i, arm in enumerate(arms):
        stored = repository.load_session(arm, "shared")
        per_frame = {}
        for d in stored:
            per_frame.setdefault(d.image_name, []).append(d.class_id)
        assert sorted(per_frame) == sorted(f"{pw}.jpg" for pw in pulse_widths)
        for classes in per_frame.values():
            assert sorted(classes) == [ITEM_CLASS_ID] * (i + 1) + [CONTAINER_CLASS_ID]
    assert repository.arm_ids_of_session("shared") == arms


def _post_chunked(port: int, url: str, body: bytes, chunk_bytes: int = 64 * 1024) -> tuple[int, dict]:
    """POST ``body`` with ``Transfer-Encoding: chunked`` (no Content-Length) over a real socket."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        chunks = (body[i:i + chunk_bytes] for i in range(0, len(body), chunk_bytes))
        connection.request("POST", url, body=chunks, headers={"Content-Type": "image/png"}, encode_chunked=True)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_chunked_frame_over_the_limit_is_413_and_stores_nothing(app, repository, archive):
    """A chunked body is not cut at the limit and then judged as a truncated image."""
    limit = app.config["MAX_CONTENT_LENGTH"]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    whole = frame_bytes(FRAME)
    try:
        status, body = _post_chunked(server.server_port, "/process_image?arm_id=ARM001&session_id=s1&image_name=1200.jpg", whole)
        assert status == 200, body
        over = whole + b"\x00" * (limit + 1 - len(whole))  # a valid frame, padded one byte past the limit
        status, body = _post_chunked(server.server_port, "/process_image?arm_id=ARM001&session_id=s1&image_name=1300.jpg", over)
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert status == 413, body
    assert f"limit of {limit} bytes" in body["detail"]
    assert [f["image_name"] for f in repository.session_frames("ARM001", "s1")] == ["1200.jpg"]
    assert sorted(p.name for p in archive.root.rglob("*") if p.is_file()) == ["1200.jpg"]


@pytest.mark.parametrize("shape_hw", [(40960, 40), (40, 40960)], ids=["tall", "wide"])
def test_frame_of_absurd_aspect_ratio_is_refused_naming_the_limit(client, repository, archive, shape_hw):
    data = encode_png(np.zeros((*shape_hw, 3), np.uint8))
    response = ingest(client, data, image="1300.png")
    assert response.status_code == 400
    detail = response.get_json()["detail"]
    assert f"{shape_hw[1]}x{shape_hw[0]}" in detail
    assert f"at most {MAX_ASPECT_RATIO:g}" in detail
    with pytest.raises(UnknownSession):
        repository.load_session("ARM001", "s1")
    assert not any(p.is_file() for p in archive.root.rglob("*"))


class OutageRepository:
    """The real repository, whose ``save_frame`` fails as in a database outage while ``down``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.down = False

    def save_frame(self, *args, **kwargs):
        if self.down:
            raise ServiceUnavailable("database connection failed")
        return self.inner.save_frame(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_frame_refused_in_a_database_outage_leaves_no_file_and_keeps_the_old_one(make_settings, repository, archive):
    outage = OutageRepository(repository)
    client = create_app(make_settings(max_body_bytes=300_000), detector=FakeDetector(), embedder=FakeEmbedder(),
                        repository=outage, archive=archive).test_client()
    original = frame_bytes(FRAME)
    assert ingest(client, original).status_code == 200
    before = snapshot(repository)
    outage.down = True
    replaced = ingest(client, frame_bytes(OTHER_FRAME))  # a re-upload of 1200.jpg
    new = ingest(client, frame_bytes(OTHER_FRAME), image="1300.jpg")
    assert (replaced.status_code, new.status_code) == (503, 503)
    assert new.mimetype == "application/problem+json" and new.get_json()["detail"]
    assert snapshot(repository) == before
    assert archive.get("ARM001/s1/1200.jpg") == original
    assert [p.relative_to(archive.root).as_posix() for p in archive.root.rglob("*") if p.is_file()] == ["ARM001/s1/1200.jpg"]
    outage.down = False  # the database is back: the same upload now goes through
    assert ingest(client, frame_bytes(OTHER_FRAME), image="1300.jpg").status_code == 200
    assert archive.get("ARM001/s1/1300.jpg") == frame_bytes(OTHER_FRAME)
