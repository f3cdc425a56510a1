"""S3 uploads and SSM lookups against moto in server mode (a real HTTP endpoint on 127.0.0.1).

The outage test stops moto's HTTP server (closing its socket, so connections are
refused as when S3 is unreachable), submits frames, starts a server on the same port
again and checks that every frame lands with its bytes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from flask import Flask
from moto.server import ThreadedMotoServer

from sorterbot_cloud import ops
from sorterbot_cloud.config import Settings
from sorterbot_cloud.errors import BadRequest, ServiceUnavailable
from sorterbot_cloud.ops import aws, metrics
from sorterbot_cloud.ops.aws import (
    AwsContext,
    S3MirroredArchive,
    UploadQueue,
    archive_key,
    frame_key,
    resolve_pg_conn,
)
from sorterbot_cloud.storage import DiskArchive

REGION = "eu-central-1"
SUFFIX = "t3st42"


class MotoEndpoint:
    """moto's S3+SSM server on 127.0.0.1 that can be taken down and brought back on the same port."""

    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        self.server.stop()
        self.server._server.server_close()  # stop() leaves the socket listening: connections would hang

    def up(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()


@pytest.fixture(scope="module")
def moto_module():
    patch = pytest.MonkeyPatch()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing"}.items():
        patch.setenv(name, value)
    patch.delenv("AWS_PROFILE", raising=False)
    endpoint = MotoEndpoint()
    yield endpoint
    endpoint.down()
    patch.undo()


@pytest.fixture
def moto_endpoint(moto_module):
    """The module's moto server, up, with no bucket and no parameter (moto's state is per process)."""
    if not moto_module.server._server_ready_event.is_set():
        moto_module.up()
    requests.post(moto_module.url + "/moto-api/reset", timeout=10).raise_for_status()
    return moto_module


def make_settings(endpoint: MotoEndpoint, tmp_path: Path, **overrides) -> Settings:
    values = dict(mode="aws-dev", deploy_region=REGION, aws_endpoint_url=endpoint.url, data_dir=tmp_path / "data")
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def context(moto_endpoint, tmp_path):
    """An AwsContext whose bucket ``sorterbot-<RESOURCE_SUFFIX>`` exists."""
    settings = make_settings(moto_endpoint, tmp_path)
    ssm = aws.make_client("ssm", settings)
    ssm.put_parameter(Name="RESOURCE_SUFFIX", Value=SUFFIX, Type="String", Overwrite=True)
    ctx = AwsContext.from_settings(settings)
    ctx.s3.create_bucket(Bucket=ctx.bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return ctx


def frames(tmp_path: Path, n: int, seed: int = 0) -> dict[str, bytes]:
    """``n`` files of random bytes on disk, keyed by their S3 key."""
    rng = np.random.default_rng(seed)
    out = {}
    folder = tmp_path / "frames"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        name = f"{1000 + 50 * i}.jpg"
        data = rng.integers(0, 256, size=2048, dtype=np.uint8).tobytes()
        (folder / name).write_bytes(data)
        out[f"sess_1/{name}"] = data
    return out


def stored(ctx: AwsContext, key: str) -> bytes:
    return ctx.s3.get_object(Bucket=ctx.bucket, Key=key)["Body"].read()


def pending_gauge() -> float:
    return metrics.REGISTRY.get_sample_value("sorterbot_s3_uploads_pending")


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` (a deadlock guard for background threads, not a speed assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_bucket_name_comes_from_ssm_suffix(context):
    assert context.bucket == f"sorterbot-{SUFFIX}"
    assert context.region == REGION


def test_explicit_bucket_wins_over_ssm(moto_endpoint, tmp_path):
    settings = make_settings(moto_endpoint, tmp_path, s3_bucket="my-own-bucket")
    assert AwsContext.from_settings(settings).bucket == "my-own-bucket"


def test_missing_suffix_parameter_is_service_unavailable(moto_endpoint, tmp_path):
    with pytest.raises(ServiceUnavailable, match="'RESOURCE_SUFFIX' could not be read"):
        AwsContext.from_settings(make_settings(moto_endpoint, tmp_path))


def test_region_is_required(moto_endpoint, tmp_path):
    with pytest.raises(ValueError, match="DEPLOY_REGION"):
        AwsContext.from_settings(make_settings(moto_endpoint, tmp_path, deploy_region=None))


@pytest.mark.parametrize(
    "mode, expected", [("production", "postgresql://ssm-user@db/sorterbot"), ("aws-dev", "postgresql://env@db/x"),
                       ("local", "postgresql://env@db/x")],
    ids=["production-reads-ssm", "aws-dev-uses-env", "local-uses-env"],
)
def test_resolve_pg_conn(moto_endpoint, tmp_path, mode, expected):
    settings = make_settings(moto_endpoint, tmp_path, mode=mode, pg_conn="postgresql://env@db/x")
    aws.make_client("ssm", settings).put_parameter(
        Name="PG_CONN", Value="postgresql://ssm-user@db/sorterbot", Type="SecureString", Overwrite=True
    )
    assert resolve_pg_conn(settings) == expected


def test_resolve_pg_conn_without_parameter(moto_endpoint, tmp_path):
    settings = make_settings(moto_endpoint, tmp_path, mode="production")
    with pytest.raises(ServiceUnavailable, match="'PG_CONN' could not be read"):
        resolve_pg_conn(settings)


def test_read_frame_uploaded_by_the_client(context):
    context.s3.put_object(Bucket=context.bucket, Key="S7/1200.jpg", Body=b"jpeg bytes")
    assert context.read_frame("S7", "1200.jpg") == b"jpeg bytes"


def test_read_frame_of_either_client_layout(context):
    """Clients of late April 2020 upload to <arm_id>/<session_id>/<image_name>, earlier ones to <session_id>/<image_name>."""
    context.s3.put_object(Bucket=context.bucket, Key="ARM7/S8/1200.jpg", Body=b"late April client")
    context.s3.put_object(Bucket=context.bucket, Key="S8/1250.jpg", Body=b"earlier client")
    assert context.read_frame("S8", "1200.jpg", "ARM7") == b"late April client"
    assert context.read_frame("S8", "1250.jpg", "ARM7") == b"earlier client"
    context.s3.put_object(Bucket=context.bucket, Key="S8/1200.jpg", Body=b"another arm's session S8")
    assert context.read_frame("S8", "1200.jpg", "ARM7") == b"late April client"  # the arm's own key first
    with pytest.raises(BadRequest, match=r"no frame at s3://\S+/ARM7/S8/1300.jpg or s3://\S+/S8/1300.jpg"):
        context.read_frame("S8", "1300.jpg", "ARM7")
    with pytest.raises(BadRequest, match="arm_id must be"):
        context.read_frame("S8", "1200.jpg", "../x")


@pytest.mark.parametrize(
    "session_id, image_name, match",
    [("S7", "1250.jpg", r"no frame at s3://sorterbot-t3st42/S7/1250.jpg"), ("../x", "1200.jpg", "session_id must be"),
     ("S7", "a/b.jpg", "image_name must look like")],
    ids=["missing-key", "bad-session", "bad-image-name"],
)
def test_read_frame_errors(context, session_id, image_name, match):
    with pytest.raises(BadRequest, match=match):
        context.read_frame(session_id, image_name)


def test_read_frame_when_s3_is_down(context, moto_endpoint):
    moto_endpoint.down()
    with pytest.raises(ServiceUnavailable, match="not reachable"):
        context.read_frame("S7", "1200.jpg")
    moto_endpoint.up()


def test_uploads_land(context, tmp_path):
    data = frames(tmp_path, 4)
    queue = context.upload_queue(tmp_path / "spool")
    try:
        for key in data:
            queue.submit(tmp_path / "frames" / key.split("/")[1], key)
        assert queue.flush(30)
        assert {key: stored(context, key) for key in data} == data
        assert list((tmp_path / "spool").iterdir()) == []
    finally:
        queue.close()


def test_s3_outage_mid_session_loses_no_frame(context, moto_endpoint, tmp_path):
    data = frames(tmp_path, 6, seed=1)
    keys = list(data)
    queue = UploadQueue(context.s3, context.bucket, tmp_path / "spool", backoff_base_s=0.05, backoff_max_s=0.5,
                        random_state=0)
    try:
        for key in keys[:2]:  # S3 up
            queue.submit(tmp_path / "frames" / key.split("/")[1], key)
        assert queue.flush(30)
        pending_before = pending_gauge()
        moto_endpoint.down()  # S3 goes away in the middle of the session
        for key in keys[2:]:
            queue.submit(tmp_path / "frames" / key.split("/")[1], key)
        assert wait_until(lambda: queue.failed_attempts >= 2)
        assert queue.pending == 4
        assert pending_gauge() == pending_before + 4
        markers = [json.loads(p.read_text()) for p in (tmp_path / "spool").glob("*.json")]
        assert sorted(m["key"] for m in markers) == sorted(keys[2:])
        moto_endpoint.up()  # S3 is back
        assert queue.flush(60)
        assert {key: stored(context, key) for key in keys} == data
        assert pending_gauge() == pending_before
        assert list((tmp_path / "spool").glob("*.json")) == []
    finally:
        queue.close()


def test_spooled_frames_survive_a_restart(context, moto_endpoint, tmp_path):
    data = frames(tmp_path, 3, seed=2)
    moto_endpoint.down()
    first = UploadQueue(context.s3, context.bucket, tmp_path / "spool", backoff_base_s=0.05, backoff_max_s=0.2)
    for key in data:
        first.submit(tmp_path / "frames" / key.split("/")[1], key)
    assert wait_until(lambda: first.failed_attempts >= 1)
    first.close()  # the process ends with S3 still down
    assert len(list((tmp_path / "spool").glob("*.json"))) == 3
    moto_endpoint.up()
    second = UploadQueue(context.s3, context.bucket, tmp_path / "spool")  # the next start
    try:
        assert second.flush(30)
        assert {key: stored(context, key) for key in data} == data
    finally:
        second.close()


def test_resubmitting_a_key_uploads_the_newest_bytes(context, moto_endpoint, tmp_path):
    path = tmp_path / "1200.jpg"
    moto_endpoint.down()
    queue = UploadQueue(context.s3, context.bucket, tmp_path / "spool", backoff_base_s=0.05, backoff_max_s=0.2)
    try:
        path.write_bytes(b"first")
        queue.submit(path, "S1/1200.jpg")
        path.write_bytes(b"second")
        queue.submit(path, "S1/1200.jpg")
        assert queue.pending == 1
        moto_endpoint.up()
        assert queue.flush(30)
        assert stored(context, "S1/1200.jpg") == b"second"
    finally:
        queue.close()


def test_vanished_local_file_is_dropped_not_retried_forever(context, moto_endpoint, tmp_path):
    path = tmp_path / "1300.jpg"
    path.write_bytes(b"x")
    queue = UploadQueue(context.s3, context.bucket, tmp_path / "spool", start=False)
    queue.submit(path, "S1/1300.jpg")
    path.unlink()
    queue.start()
    try:
        assert queue.flush(30)
        assert queue.uploaded == 0
    finally:
        queue.close()


@pytest.mark.parametrize(
    "call, error, match",
    [(lambda q, p: q.submit(p / "nope.jpg", "S1/1.jpg"), FileNotFoundError, "no file to upload"),
     (lambda q, p: q.submit(p / "f.jpg", "/abs"), ValueError, "relative key")],
    ids=["missing-file", "absolute-key"],
)
def test_submit_rejects(context, tmp_path, call, error, match):
    (tmp_path / "f.jpg").write_bytes(b"x")
    queue = UploadQueue(context.s3, context.bucket, tmp_path / "spool", start=False)
    with pytest.raises(error, match=match):
        call(queue, tmp_path)
    assert queue.pending == 0


@pytest.mark.parametrize(
    "session_id, image_name, expected", [("sess_2020_04_25__10_12_33", "1200.jpg", "sess_2020_04_25__10_12_33/1200.jpg")],
    ids=["original-client-layout"],
)
def test_frame_key(session_id, image_name, expected):
    assert frame_key(session_id, image_name) == expected


@pytest.mark.parametrize(("session_id", "image_name", "match"), [("S1\n", "1200.jpg", "session_id"), ("S1", "1200.jpg\n", "image_name")],
                         ids=["session-trailing-newline", "image-trailing-newline"])
def test_frame_key_refuses_a_trailing_newline(session_id, image_name, match):
    with pytest.raises(BadRequest, match=match):
        frame_key(session_id, image_name)


def test_mirrored_archive_keeps_disk_copy_and_uploads(context, tmp_path):
    queue = context.upload_queue(tmp_path / "spool")
    archive = S3MirroredArchive(DiskArchive(tmp_path / "images"), queue)
    try:
        uri = archive.put("ARM001", "S9", "1450.jpg", b"frame")
        assert archive.get(uri) == b"frame"
        assert queue.flush(30)
        assert stored(context, "ARM001/S9/1450.jpg") == b"frame"
    finally:
        queue.close()


def test_two_arms_with_one_session_id_keep_their_own_s3_copies(context, tmp_path):
    queue = context.upload_queue(tmp_path / "spool")
    archive = S3MirroredArchive(DiskArchive(tmp_path / "images"), queue)
    try:
        archive.put("ARM001", "S9", "1450.jpg", b"frame of arm 1")
        archive.put("ARM002", "S9", "1450.jpg", b"frame of arm 2")
        assert queue.flush(30)
    finally:
        queue.close()
    assert stored(context, archive_key("ARM001", "S9", "1450.jpg")) == b"frame of arm 1"
    assert stored(context, archive_key("ARM002", "S9", "1450.jpg")) == b"frame of arm 2"
    fresh = S3MirroredArchive(DiskArchive(tmp_path / "fresh-replica"), queue)  # no disk copy
    assert fresh.get("ARM001/S9/1450.jpg") == b"frame of arm 1"
    assert fresh.get("ARM002/S9/1450.jpg") == b"frame of arm 2"


def test_frames_archived_under_the_old_key_are_still_read(context, tmp_path):
    queue = UploadQueue(context.s3, context.bucket, tmp_path / "spool", start=False)
    archive = S3MirroredArchive(DiskArchive(tmp_path / "images"), queue)
    context.s3.put_object(Bucket=context.bucket, Key=frame_key("S3old", "1200.jpg"), Body=b"archived before")
    assert archive.get("ARM001/S3old/1200.jpg") == b"archived before"
    context.s3.put_object(Bucket=context.bucket, Key=archive_key("ARM001", "S3old", "1200.jpg"), Body=b"arm's own")
    assert archive.get("ARM001/S3old/1200.jpg") == b"arm's own"  # the arm's own key wins
    with pytest.raises(FileNotFoundError, match="neither on disk nor in S3"):
        archive.get("ARM001/S3old/1250.jpg")


def test_mirrored_archive_queues_nothing_for_a_refused_frame(context, tmp_path):
    queue = UploadQueue(context.s3, context.bucket, tmp_path / "spool", start=False)
    archive = S3MirroredArchive(DiskArchive(tmp_path / "images"), queue)
    with pytest.raises(ServiceUnavailable, match="database"):
        with archive.staged("ARM001", "S9", "1450.jpg", b"frame"):
            raise ServiceUnavailable("database connection failed")
    assert queue.pending == 0
    assert not archive.exists("ARM001/S9/1450.jpg")
    with archive.staged("ARM001", "S9", "1450.jpg", b"frame") as uri:
        assert queue.pending == 0  # queued only once the row is stored
    assert queue.pending == 1 and archive.get(uri) == b"frame"


def test_init_app_in_aws_mode_builds_context_and_queue(context, moto_endpoint, tmp_path):
    settings = make_settings(moto_endpoint, tmp_path)
    app = Flask("fake_service")
    state = ops.init_app(app, settings, configure_logs=False)
    assert state.aws.bucket == context.bucket
    assert state.uploads is aws.upload_queue_for(settings)
    assert state.uploads.spool_dir == settings.data_dir / "upload-spool"
    local = ops.init_app(Flask("local"), Settings(data_dir=tmp_path), configure_logs=False)
    assert local.aws is None and local.uploads is None
    state.uploads.close()


def test_publish_overview_writes_locally_and_uploads_in_aws_modes(context, moto_endpoint, tmp_path):
    settings = make_settings(moto_endpoint, tmp_path)
    path = aws.publish_overview(settings, "ARM001", "S5", b"\x89PNG overview")
    assert path == settings.overview_dir / "ARM001" / "S5.png" and path.read_bytes() == b"\x89PNG overview"
    assert aws.upload_queue_for(settings).flush(30)
    assert stored(context, "overviews/ARM001/S5.png") == b"\x89PNG overview"


def test_publish_overview_in_local_mode_stays_local(tmp_path):
    settings = Settings(data_dir=tmp_path)
    path = aws.publish_overview(settings, "ARM001", "S5", b"png")
    assert path.read_bytes() == b"png"
    assert settings not in aws._queues


@pytest.mark.parametrize("arm_id, session_id", [("../x", "S1"), ("ARM001", "a/b")], ids=["arm", "session"])
def test_publish_overview_rejects_bad_ids(tmp_path, arm_id, session_id):
    with pytest.raises(BadRequest, match="must be 1-64"):
        aws.publish_overview(Settings(data_dir=tmp_path), arm_id, session_id, b"png")
    assert not (tmp_path / "overviews").exists()


def test_mirrored_archive_reports_a_spool_failure(context, tmp_path):
    queue = UploadQueue(context.s3, context.bucket, tmp_path / "spool", start=False)
    archive = S3MirroredArchive(DiskArchive(tmp_path / "images"), queue)
    (tmp_path / "spool").rmdir()
    (tmp_path / "spool").write_text("not a directory")  # the spool cannot take markers any more
    with pytest.raises(ServiceUnavailable, match="could not be queued"):
        archive.put("ARM001", "S9", "1450.jpg", b"frame")
    assert queue.pending == 0
