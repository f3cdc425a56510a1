"""The aws modes through the real app: moto's S3/SSM server and a real PostgreSQL.

- The original HTTP-era client uploaded each frame to S3 at ``<session_id>/<image_name>``
  and posted ``/process_image`` with no body: the service reads the frame from there.
- A frame posted with a body is archived on disk and mirrored to S3 at that same key.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from moto.server import ThreadedMotoServer

from sorterbot_cloud.api import create_app
from sorterbot_cloud.ops import aws
from tests.integration.conftest_service import SESSION_FRAMES, FakeDetector, FakeEmbedder, frame_bytes

REGION = "eu-central-1"
SUFFIX = "svc42"


@pytest.fixture(scope="module")
def moto_url():
    patch = pytest.MonkeyPatch()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        patch.setenv(name, "testing")
    patch.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    server.stop()
    patch.undo()


@pytest.fixture
def aws_settings(make_settings, moto_url):
    settings = make_settings(mode="aws-dev", deploy_region=REGION, aws_endpoint_url=moto_url)
    ssm = aws.make_client("ssm", settings)
    ssm.put_parameter(Name="RESOURCE_SUFFIX", Value=SUFFIX, Type="String", Overwrite=True)
    s3 = aws.make_client("s3", settings)
    bucket = f"sorterbot-{SUFFIX}"
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return settings


@pytest.fixture
def app(aws_settings, repository):
    app = create_app(aws_settings, detector=FakeDetector(), embedder=FakeEmbedder(), repository=repository)
    yield app
    app.extensions["sorterbot_ops"].close()


def s3_client(settings):
    return aws.make_client("s3", settings)


def test_empty_body_reads_the_frame_from_s3(app, aws_settings, repository):
    data = frame_bytes(SESSION_FRAMES["1200.jpg"])
    s3_client(aws_settings).put_object(Bucket=f"sorterbot-{SUFFIX}", Key="sess_s3/1200.jpg", Body=data)
    client = app.test_client()
    # exactly what the 2020 client sent: query parameters only, no body, no content type
    response = client.post("/process_image?session_id=sess_s3&image_name=1200.jpg&arm_id=ARM001")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(response.get_json()["detections"]) == 3
    assert len(repository.load_session("ARM001", "sess_s3")) == 3


def test_empty_body_reads_the_late_april_client_layout(app, aws_settings, repository):
    """HTTP-era clients of late April 2020 upload to <arm_id>/<session_id>/<image_name>."""
    data = frame_bytes(SESSION_FRAMES["1200.jpg"])
    s3 = s3_client(aws_settings)
    s3.put_object(Bucket=f"sorterbot-{SUFFIX}", Key="ARM002/sess_apr/1200.jpg", Body=data)
    s3.put_object(Bucket=f"sorterbot-{SUFFIX}", Key="sess_apr/1200.jpg", Body=frame_bytes(SESSION_FRAMES["1400.jpg"]))
    response = app.test_client().post("/process_image?session_id=sess_apr&image_name=1200.jpg&arm_id=ARM002")
    assert response.status_code == 200, response.get_data(as_text=True)
    archived = Path(urlparse(response.get_json()["image_uri"]).path).read_bytes()
    assert archived == data  # the arm's own upload, not the session-only key's
    assert len(repository.load_session("ARM002", "sess_apr")) == len(SESSION_FRAMES["1200.jpg"])


def test_empty_body_with_no_s3_object_is_a_4xx_and_stores_nothing(app, repository):
    response = app.test_client().post("/process_image?session_id=sess_none&image_name=1250.jpg&arm_id=ARM001")
    assert 400 <= response.status_code < 500
    assert response.mimetype == "application/problem+json"
    assert "1250.jpg" in response.get_json()["detail"]
    assert repository.arm_ids_of_session("sess_none") == []


def test_posted_frame_is_mirrored_to_s3(app, aws_settings):
    data = frame_bytes(SESSION_FRAMES["1400.jpg"])
    response = app.test_client().post("/process_image?session_id=sess_up&image_name=1400.jpg&arm_id=ARM001", data=data)
    assert response.status_code == 200
    s3 = s3_client(aws_settings)
    deadline = time.monotonic() + 20  # the upload queue is a background thread: wait, do not time
    body = None
    while time.monotonic() < deadline and body is None:
        try:
            body = s3.get_object(Bucket=f"sorterbot-{SUFFIX}", Key="ARM001/sess_up/1400.jpg")["Body"].read()
        except s3.exceptions.NoSuchKey:
            time.sleep(0.05)
    assert body == data
