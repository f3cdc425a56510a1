"""Re-embedding stored sessions after the embedder changes (``Service.reembed_session``, ``db reembed``).

Real PostgreSQL and a real disk archive. Frames are ingested with the fake detector and a
fake embedder (stand-ins for the models, which are not under test here); the session is
then re-embedded with a second, different fake embedder (and, for the CLI, with the
shipped embedder), and the stored vectors must be exactly the new model's embeddings
of the same crops.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from sorterbot_cloud.db.cli import db as db_cli
from sorterbot_cloud.embedding import crop_items
from sorterbot_cloud.errors import ServiceUnavailable, UnknownSession
from sorterbot_cloud.imaging import decode_image
from sorterbot_cloud.overview import load_session_frames
from sorterbot_cloud.service import Service
from sorterbot_cloud.storage import DiskArchive
from sorterbot_cloud.structures import ITEM_CLASS_ID
from tests.integration.conftest_service import FakeDetector, FakeEmbedder, Rect, frame_bytes

FRAMES = {
    "1200.png": [Rect("red", (10, 10, 40, 40)), Rect("blue", (60, 20, 90, 50)), Rect("green", (150, 100, 250, 200))],
    "1300.png": [Rect("yellow", (200, 20, 230, 50)), Rect("green", (20, 120, 120, 220))],
}


class FakeEmbedderB(FakeEmbedder):
    """A second fake embedder whose vectors differ from :class:`FakeEmbedder`'s (a 'new model')."""

    def __init__(self) -> None:
        super().__init__()
        self._basis = np.random.default_rng(1).choice([-1.0, 1.0], size=self._basis.shape).astype(np.float32)


@pytest.fixture
def service(settings, repository, archive):
    service = Service(settings, detector=FakeDetector(), embedder=FakeEmbedder(), repository=repository, archive=archive)
    for name, rects in FRAMES.items():
        service.process_frame("ARM001", "s1", name, frame_bytes(rects))
    return service


def expected_embeddings(embedder, repository, arm="ARM001", session="s1"):
    """What ``embedder`` answers for each stored item box, cut from the posted frames."""
    out = {}
    for d in repository.load_session(arm, session):
        if d.class_id == ITEM_CLASS_ID:
            image = decode_image(frame_bytes(FRAMES[d.image_name]))
            out[d.detection_id] = embedder.embed(crop_items(image, d.box_xyxy[None]))[0]
    return out


def stored(repository, arm="ARM001", session="s1"):
    return {d.detection_id: d for d in repository.load_session(arm, session)}


def test_reembed_replaces_item_embeddings_with_the_new_models_and_keeps_the_rest(service, repository):
    before = stored(repository)
    service.embedder = FakeEmbedderB()
    assert service.reembed_session("ARM001", "s1") == 3
    after = stored(repository)
    assert after.keys() == before.keys()
    expected = expected_embeddings(FakeEmbedderB(), repository)
    assert sorted(expected) == sorted(i for i, d in before.items() if d.class_id == ITEM_CLASS_ID)
    for det_id, d in after.items():
        np.testing.assert_array_equal(d.box_xyxy, before[det_id].box_xyxy)
        assert (d.class_id, d.score, d.image_name) == (before[det_id].class_id, before[det_id].score, before[det_id].image_name)
        if d.class_id == ITEM_CLASS_ID:
            np.testing.assert_allclose(d.embedding, expected[det_id], atol=1e-6)
            assert not np.allclose(d.embedding, before[det_id].embedding, atol=1e-3)  # the model did change
        else:
            assert d.embedding is None and before[det_id].embedding is None


def test_reembed_with_the_same_model_reproduces_the_ingested_embeddings(service, repository):
    before = stored(repository)
    service.reembed_session("ARM001", "s1")
    for det_id, d in stored(repository).items():
        if d.class_id == ITEM_CLASS_ID:
            np.testing.assert_allclose(d.embedding, before[det_id].embedding, atol=1e-6)


def test_reembed_with_a_missing_archived_frame_changes_nothing(service, repository, archive):
    before = {i: (None if d.embedding is None else d.embedding.tobytes()) for i, d in stored(repository).items()}
    archive.path_of("ARM001", "s1", "1300.png").unlink()
    service.embedder = FakeEmbedderB()
    with pytest.raises(ServiceUnavailable, match="missing"):
        service.reembed_session("ARM001", "s1")
    after = {i: (None if d.embedding is None else d.embedding.tobytes()) for i, d in stored(repository).items()}
    assert after == before


def test_reembed_of_an_unknown_session_raises(service):
    with pytest.raises(UnknownSession):
        service.reembed_session("ARM001", "nope")


def test_replace_embeddings_refuses_a_container_and_rolls_back(service, repository):
    dets = stored(repository)
    item_id = next(i for i, d in dets.items() if d.class_id == ITEM_CLASS_ID)
    container_id = next(i for i, d in dets.items() if d.class_id != ITEM_CLASS_ID)
    vector = np.zeros(512, np.float32)
    vector[0] = 1.0
    with pytest.raises(ValueError, match=str(container_id)):
        repository.replace_embeddings({item_id: vector, container_id: vector})
    np.testing.assert_array_equal(stored(repository)[item_id].embedding, dets[item_id].embedding)


def test_db_reembed_cli_writes_the_configured_embedders_vectors(service, repository, settings, monkeypatch):
    from sorterbot_cloud.embedding import load_embedder

    monkeypatch.setenv("PG_CONN", settings.pg_conn)
    monkeypatch.setenv("DATA_DIR", str(settings.data_dir))
    result = CliRunner().invoke(db_cli, ["reembed", "--arm-id", "ARM001"])
    assert result.exit_code == 0, result.output
    assert "ARM001/s1: 3 items re-embedded" in result.output
    expected = expected_embeddings(load_embedder(settings), repository)
    for det_id, vector in expected.items():
        np.testing.assert_allclose(stored(repository)[det_id].embedding, vector, atol=1e-5)


def test_reembed_cuts_crops_with_the_configured_margin(service, repository, settings):
    import dataclasses

    wide = Service(dataclasses.replace(settings, crop_margin=0.3), detector=None, embedder=FakeEmbedderB(),
                   repository=repository, archive=service.archive)
    wide.reembed_session("ARM001", "s1")
    for d in repository.load_session("ARM001", "s1"):
        if d.class_id == ITEM_CLASS_ID:
            image = decode_image(frame_bytes(FRAMES[d.image_name]))
            expected = wide.embedder.embed(crop_items(image, d.box_xyxy[None], margin=0.3))[0]
            default_margin = wide.embedder.embed(crop_items(image, d.box_xyxy[None]))[0]
            assert not np.allclose(expected, default_margin)  # the margin changes what the fake embedder sees
            np.testing.assert_allclose(d.embedding, expected, atol=1e-6)


def test_db_reembed_cli_uses_the_configured_torch_threads(service, settings, monkeypatch):
    import torch

    monkeypatch.setenv("PG_CONN", settings.pg_conn)
    monkeypatch.setenv("DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TORCH_THREADS", "1")
    monkeypatch.setenv("INFERENCE_RUNTIME", "torch")  # on ONNX Runtime the threads go to its sessions
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = CliRunner().invoke(db_cli, ["reembed", "--arm-id", "ARM001"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def expected_colours(repository, arm="ARM001", session="s1"):
    """The CIELab colour of each stored item box, measured on the posted frames."""
    from sorterbot_cloud.embedding.colour import colour_lab

    return {d.detection_id: colour_lab(decode_image(frame_bytes(FRAMES[d.image_name])), d.box_xyxy[None])[0]
            for d in repository.load_session(arm, session) if d.class_id == ITEM_CLASS_ID}


def test_ingest_stores_each_items_colour_and_none_for_containers(service, repository):
    expected = expected_colours(repository)
    for det_id, d in stored(repository).items():
        if d.class_id == ITEM_CLASS_ID:
            assert d.colour_lab.shape == (3,) and d.colour_lab.dtype == np.float32
            np.testing.assert_allclose(d.colour_lab, expected[det_id], atol=1e-4)
        else:
            assert d.colour_lab is None
    by_colour = {tuple(np.round(d.colour_lab[1:] / 20)) for d in stored(repository).values() if d.colour_lab is not None}
    assert len(by_colour) == 3  # red, blue and yellow differ in a*, b*


def test_reembed_measures_the_colours_of_items_stored_before_colours_were_kept(service, repository, settings):
    import psycopg

    expected = expected_colours(repository)
    with psycopg.connect(settings.pg_conn) as conn:  # as frames stored before migration 0002
        conn.execute("UPDATE detections SET colour_lab = NULL")
    assert all(d.colour_lab is None for d in stored(repository).values())
    assert service.reembed_session("ARM001", "s1") == 3
    for det_id, d in stored(repository).items():
        if d.class_id == ITEM_CLASS_ID:
            np.testing.assert_allclose(d.colour_lab, expected[det_id], atol=1e-4)
        else:
            assert d.colour_lab is None


@pytest.mark.parametrize("colours, match", [
    ("other-ids", "same detection ids"),
    ("wrong-shape", r"shape \(3,\)"),
    ("nan", "finite"),
])
def test_replace_embeddings_rejects_bad_colours_and_changes_nothing(service, repository, colours, match):
    before = stored(repository)
    item_id = next(i for i, d in before.items() if d.class_id == ITEM_CLASS_ID)
    vector = np.zeros(512, np.float32)
    vector[0] = 1.0
    given = {"other-ids": {item_id + 1000: np.zeros(3)}, "wrong-shape": {item_id: np.zeros(2)},
             "nan": {item_id: np.array([50.0, np.nan, 0.0])}}[colours]
    with pytest.raises(ValueError, match=match):
        repository.replace_embeddings({item_id: vector}, given)
    after = stored(repository)[item_id]
    np.testing.assert_array_equal(after.embedding, before[item_id].embedding)
    np.testing.assert_array_equal(after.colour_lab, before[item_id].colour_lab)


def test_reembed_and_overview_frames_after_the_data_directory_moved(settings, repository, service, archive, tmp_path):
    # a restored backup or a volume mounted elsewhere: the stored URIs name the old root
    uris = [f["image_uri"] for f in repository.session_frames("ARM001", "s1")]
    assert all(uri.startswith(archive.root.as_uri()) for uri in uris)
    moved_root = tmp_path / "moved_images"
    shutil.move(str(archive.root), moved_root)
    moved = DiskArchive(moved_root)
    service.archive = moved
    service.embedder = FakeEmbedderB()
    assert service.reembed_session("ARM001", "s1") == 3
    expected = expected_embeddings(FakeEmbedderB(), repository)
    for det_id, d in stored(repository).items():
        if d.class_id == ITEM_CLASS_ID:
            np.testing.assert_allclose(d.embedding, expected[det_id], atol=1e-6)
    frames = load_session_frames(repository, moved, "ARM001", "s1")
    assert [name for name, _ in frames] == sorted(FRAMES)  # none skipped
    for name, image in frames:
        np.testing.assert_array_equal(image, decode_image(frame_bytes(FRAMES[name])))
