"""DiskArchive: atomic writes, reads by URI or key, path traversal refused."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.storage import DiskArchive


@pytest.fixture
def archive(tmp_path) -> DiskArchive:
    return DiskArchive(tmp_path / "images")


def payload(seed: int, n: int = 4096) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def test_put_then_get_by_uri_and_by_key(archive, tmp_path):
    data = payload(0)
    uri = archive.put("ARM001", "sess_2020_04_25__10_12_33", "1200.jpg", data)

    assert uri == (tmp_path / "images" / "ARM001" / "sess_2020_04_25__10_12_33" / "1200.jpg").resolve().as_uri()
    assert archive.get(uri) == data
    assert archive.get("ARM001/sess_2020_04_25__10_12_33/1200.jpg") == data
    assert archive.exists(uri) is True
    assert archive.uri_of("ARM001", "sess_2020_04_25__10_12_33", "1200.jpg") == uri


def test_put_replaces_and_leaves_no_temporary_file(archive):
    archive.put("ARM001", "s1", "1250.5.png", payload(1))
    uri = archive.put("ARM001", "s1", "1250.5.png", payload(2, 100))

    assert archive.get(uri) == payload(2, 100)
    folder = archive.path_of("ARM001", "s1", "1250.5.png").parent
    assert sorted(os.listdir(folder)) == ["1250.5.png"]


def test_concurrent_puts_of_one_frame_leave_one_whole_file(archive):
    """Readers never see a mix: the file is one of the posted payloads, whole."""
    payloads = [payload(seed, 200_000) for seed in range(4)]
    barrier = threading.Barrier(len(payloads))

    def put(data: bytes) -> None:
        barrier.wait()
        archive.put("ARM001", "s1", "1200.jpg", data)

    threads = [threading.Thread(target=put, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert archive.get("ARM001/s1/1200.jpg") in payloads
    assert os.listdir(archive.path_of("ARM001", "s1", "1200.jpg").parent) == ["1200.jpg"]


def test_failed_write_leaves_nothing(archive):
    class Unwritable:
        def __bytes__(self):
            raise OSError("disk full")

    archive.put("ARM001", "s1", "1200.jpg", b"old")
    with pytest.raises(OSError, match="disk full"):
        archive.put("ARM001", "s1", "1200.jpg", Unwritable())
    assert archive.get("ARM001/s1/1200.jpg") == b"old"
    assert os.listdir(archive.path_of("ARM001", "s1", "1200.jpg").parent) == ["1200.jpg"]


def test_staged_frame_is_put_in_place_only_when_the_block_succeeds(archive):
    archive.put("ARM001", "s1", "1200.jpg", b"old")
    folder = archive.path_of("ARM001", "s1", "1200.jpg").parent
    for image_name in ("1200.jpg", "1300.jpg"):  # a re-upload, and a new frame
        with pytest.raises(RuntimeError, match="refused"):
            with archive.staged("ARM001", "s1", image_name, b"new") as uri:
                assert uri == archive.uri_of("ARM001", "s1", image_name)
                assert archive.get("ARM001/s1/1200.jpg") == b"old"  # nothing in place yet
                raise RuntimeError("the database refused the row")
    assert archive.get("ARM001/s1/1200.jpg") == b"old"
    assert os.listdir(folder) == ["1200.jpg"]
    with archive.staged("ARM001", "s1", "1300.jpg", b"new") as uri:
        assert not archive.exists("ARM001/s1/1300.jpg")
    assert archive.get(uri) == b"new"
    assert sorted(os.listdir(folder)) == ["1200.jpg", "1300.jpg"]


@pytest.mark.parametrize(
    ("arm_id", "session_id", "image_name", "message"),
    [
        ("..", "s1", "1200.jpg", "arm_id"),
        (".", "s1", "1200.jpg", "arm_id"),
        ("ARM001", "..", "1200.jpg", "session_id"),
        ("ARM/001", "s1", "1200.jpg", "arm_id"),
        ("ARM001", "../../etc", "1200.jpg", "session_id"),
        ("ARM001", "s1", "../../../etc/passwd", "image_name"),
        ("ARM001", "s1", "1200.jpg/../../x.jpg", "image_name"),
        ("ARM001", "s1", "passwd", "image_name"),
        ("ARM001", "s1", "/etc/1200.jpg", "image_name"),
        ("", "s1", "1200.jpg", "arm_id"),
        ("ARM001", "s1", "1200.jpg\x00.png", "image_name"),
        ("ARM001", "s1\n", "1200.jpg", "session_id"),
        ("ARM001", "s1", "1200.jpg\n", "image_name"),
    ],
    ids=[
        "dotdot-arm",
        "dot-arm",
        "dotdot-session",
        "slash-arm",
        "traversal-session",
        "traversal-image",
        "image-with-dotdot",
        "not-a-pulse-width",
        "absolute-image",
        "empty-arm",
        "nul-byte",
        "session-trailing-newline",
        "image-trailing-newline",
    ],
)
def test_malformed_names_are_refused_before_writing(archive, arm_id, session_id, image_name, message):
    with pytest.raises(BadRequest, match=message):
        archive.put(arm_id, session_id, image_name, b"x")
    assert not archive.root.exists()


@pytest.mark.parametrize(
    "ref",
    [
        "file:///etc/passwd",
        "file://evil.example/ARM001/s1/1200.jpg",
        "../ARM001/s1/1200.jpg",
        "ARM001/s1/../1200.jpg",
        "ARM001/s1",
        "ARM001/s1/1200.jpg/extra",
        "",
    ],
    ids=["uri-outside", "remote-host", "key-dotdot", "key-inner-dotdot", "key-too-short", "key-too-long", "empty"],
)
def test_references_outside_the_archive_are_refused(archive, ref):
    archive.put("ARM001", "s1", "1200.jpg", b"x")
    with pytest.raises(BadRequest):
        archive.get(ref)


def test_uri_under_root_escaping_through_dotdot_is_refused(archive):
    uri = archive.put("ARM001", "s1", "1200.jpg", b"x")
    escaped = uri.replace("/ARM001/s1/1200.jpg", "/ARM001/s1/../../../outside/1200.jpg")
    with pytest.raises(BadRequest, match="outside the archive"):
        archive.get(escaped)


def test_symlink_out_of_the_archive_is_refused(archive, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "1200.jpg").write_bytes(b"secret")
    (archive.root / "ARM001").mkdir(parents=True)
    os.symlink(outside, archive.root / "ARM001" / "s1")

    with pytest.raises(BadRequest, match="outside the archive"):
        archive.get("ARM001/s1/1200.jpg")
    with pytest.raises(BadRequest, match="outside the archive"):
        archive.put("ARM001", "s1", "1200.jpg", b"overwrite")
    assert (outside / "1200.jpg").read_bytes() == b"secret"


def test_missing_frame_raises_file_not_found(archive):
    with pytest.raises(FileNotFoundError):
        archive.get("ARM001/s1/1200.jpg")
    assert archive.exists("ARM001/s1/1200.jpg") is False
