"""Service orchestration without HTTP or a database (sorterbot_cloud.service).

The store and the models are not under test: FakeRepository, FakeArchive,
FakeDetector and FakeEmbedder stand in for them.
"""

from __future__ import annotations

import numpy as np
import pytest

from sorterbot_cloud.config import Settings
from sorterbot_cloud.errors import BadRequest, InvalidImage
from sorterbot_cloud.service import Service, validate_id, validate_image_name
from sorterbot_cloud.structures import Detections
from tests.integration.conftest_service import FakeArchive, FakeDetector, FakeEmbedder, Rect, draw_frame, frame_bytes
from tests.unit.test_api_routes import FakeRepository


class WrongShapeEmbedder:
    def embed(self, crops):
        return np.zeros((len(crops) + 1, 512), np.float32)


@pytest.fixture
def service(tmp_path):
    return Service(Settings.load(environ={}, data_dir=tmp_path), detector=FakeDetector(), embedder=FakeEmbedder(),
                   repository=FakeRepository(), archive=FakeArchive())


@pytest.mark.parametrize("value", ["ARM001", "sess_2020_04_25__10_12_33", "a.b-c", "x" * 64, 42],
                         ids=["arm", "original-session", "dots", "64-chars", "int"])
def test_valid_ids(value):
    assert validate_id("arm_id", value) == str(value)


@pytest.mark.parametrize(
    ("value", "match"),
    [(None, "missing parameter 'arm_id'"), ("", "missing"), ("x" * 65, "1 to 64"), ("a/b", "1 to 64"),
     ("a b", "1 to 64"), ("é", "1 to 64"), (True, "1 to 64"), (["A"], "1 to 64"), ("x\n", "1 to 64"),
     ("\nx", "1 to 64"), ("x\r\n", "1 to 64")],
    ids=["none", "empty", "65-chars", "slash", "space", "non-ascii", "bool", "list", "trailing-newline",
         "leading-newline", "trailing-crlf"],
)
def test_invalid_ids(value, match):
    with pytest.raises(BadRequest, match=match):
        validate_id("arm_id", value)


@pytest.mark.parametrize("name", ["1200.jpg", "1000.png", "1475.5.jpeg", "1200.JPG"], ids=str)
def test_valid_image_names(name):
    assert validate_image_name(name) == name


@pytest.mark.parametrize("name", ["../1200.jpg", "a/1200.jpg", "1200", "cat.jpg", "1200.gif", "", None, "1200.jpg\n"],
                         ids=["traversal", "dir", "no-ext", "not-pw", "gif", "empty", "none", "trailing-newline"])
def test_invalid_image_names(name):
    with pytest.raises(BadRequest, match="image_name"):
        validate_image_name(name)


def test_embeddings_are_aligned_with_detections(service):
    rects = [Rect("green", (10, 10, 80, 80)), Rect("red", (100, 10, 130, 40)), Rect("blue", (150, 100, 180, 130))]
    image = draw_frame(rects)
    detections = service.detector.detect(image)
    embeddings = service.embed_items(image, detections)
    assert len(embeddings) == len(detections) == 3
    for class_id, emb in zip(detections.class_ids, embeddings, strict=True):
        assert (emb is None) == (class_id == 1)
    red, blue = [e for e in embeddings if e is not None]
    assert red.shape == (512,) and float(red @ blue) < 0.9


def test_item_colours_are_measured_for_items_only_and_stored_with_the_frame(service):
    from sorterbot_cloud.embedding.colour import colour_lab

    rects = [Rect("green", (10, 10, 80, 80)), Rect("red", (100, 10, 130, 40)), Rect("blue", (150, 100, 180, 130))]
    image = draw_frame(rects)
    detections = service.detector.detect(image)
    colours = service.item_colours(image, detections)
    assert len(colours) == 3
    for i, (class_id, colour) in enumerate(zip(detections.class_ids, colours, strict=True)):
        if class_id == 1:
            assert colour is None
        else:
            np.testing.assert_allclose(colour, colour_lab(image, detections.boxes_xyxy[i:i + 1])[0])
    red, blue = [c for c in colours if c is not None]
    assert red[1] > 40 and blue[2] < -40  # a* of red, b* of blue
    service.process_frame("ARM001", "s1", "1200.png", frame_bytes(rects))
    stored = service.repository.colours[("ARM001", "s1", "1200.png")]
    assert [c is None for c in stored] == [c is None for c in colours]


def _same_embedding_items(colours):
    from sorterbot_cloud.structures import ArmObject, PolarPoint

    same = np.zeros(512, np.float32)
    same[0] = 1.0
    return [ArmObject(object_id=i, class_id=0, position=PolarPoint(200.0, 10.0 * i, 1200.0, 1500.0), x_mm=200.0,
                      y_mm=10.0 * i, size_mm=25.0, score=0.9, detection_ids=[i], embedding=same, height_mm=20.0,
                      colour_lab=None if c is None else np.asarray(c, np.float32))
            for i, c in enumerate(colours)]


@pytest.mark.parametrize("weight, colours, expected_groups", [
    (0.0, [(95, 0, 0), (94, 1, 1), (15, 0, 0), (14, 1, 0)], 1),
    (1.0, [(95, 0, 0), (94, 1, 1), (15, 0, 0), (14, 1, 0)], 2),
    (1.0, [(95, 0, 0), (94, 1, 1), (15, 0, 0), None], 1),
], ids=["weight-0", "white-and-black", "one-colour-missing"])
def test_group_tells_same_embedding_items_apart_by_colour_only_when_weighted(tmp_path, weight, colours, expected_groups):
    svc = Service(Settings.load(environ={}, data_dir=tmp_path, grouping_colour_weight=weight, grouping_distance=0.125),
                  detector=FakeDetector(), embedder=FakeEmbedder(), repository=FakeRepository(), archive=FakeArchive())
    labels = svc.trigger.group(_same_embedding_items(colours), 4, True)
    assert len(set(labels.tolist())) == expected_groups
    if expected_groups == 2:
        assert labels[0] == labels[1] != labels[2] == labels[3]


def test_no_item_means_no_embedder_call(service):
    image = draw_frame([Rect("green", (10, 10, 80, 80))])
    assert service.embed_items(image, service.detector.detect(image)) == [None]
    assert service.embedder.calls == 0


def test_wrong_embedder_shape_is_an_internal_error(service):
    service.embedder = WrongShapeEmbedder()
    image = draw_frame([Rect("red", (10, 10, 40, 40))])
    with pytest.raises(ValueError, match=r"must return \(1, D\)"):
        service.embed_items(image, service.detector.detect(image))


def test_process_frame_validates_before_any_work(service):
    with pytest.raises(BadRequest, match="image_name"):
        service.process_frame("ARM001", "s1", "../x.jpg", frame_bytes([]))
    with pytest.raises(InvalidImage, match="empty"):
        service.process_frame("ARM001", "s1", "1200.jpg", b"")
    assert service.detector.calls == 0 and service.repository.writes == 0
    assert service.archive.blobs == {}


def test_process_frame_archives_original_bytes_and_reports_stages(service):
    data = frame_bytes([Rect("red", (10, 10, 40, 40))], fmt="jpeg")
    out = service.process_frame("ARM001", "s1", "1200.jpg", data)
    assert service.archive.blobs["ARM001/s1/1200.jpg"] == data
    assert set(out["timings_ms"]) == {"decode", "detect", "embed", "store", "total"}
    assert out["timings_ms"]["total"] >= out["timings_ms"]["detect"]


def test_predict_stores_nothing(service):
    out = service.predict(frame_bytes([Rect("red", (10, 10, 40, 40))]))
    assert len(out["detections"]) == 1 and service.repository.writes == 0


def test_detector_returning_wrong_type_is_an_internal_error(service):
    class BadDetector:
        def detect(self, image):
            return [[0, 0, 1, 1]]

    service.detector = BadDetector()
    with pytest.raises(TypeError, match="must return Detections"):
        service.predict(frame_bytes([]))
    assert isinstance(FakeDetector().detect(draw_frame([])), Detections)


def _cubes_and_discs(constants):
    """Stored boxes of two 30 mm cubes and two 3 mm discs (the reference arm's camera),
    every item with the same embedding: only their shapes tell the kinds apart."""
    from tests.unit.test_geometry import _cuboid, _ring, observe, stored

    same = np.zeros(512, np.float32)
    same[0] = 1.0
    shapes = [_cuboid(30.0, 30.0, 30.0) + [300.0, -90.0, 0.0], _cuboid(30.0, 30.0, 30.0) + [260.0, 40.0, 0.0],
              np.concatenate([_ring(17.0, 0.0), _ring(17.0, 3.0)]) + [330.0, 20.0, 0.0],
              np.concatenate([_ring(17.0, 0.0), _ring(17.0, 3.0)]) + [280.0, 120.0, 0.0]]
    dets = []
    for pts in shapes:
        for pw, box in observe(pts, constants):
            dets.append(stored(len(dets), pw, box, embedding=same))
    return dets


@pytest.mark.parametrize("camera, expected_groups", [("reference", 2), ("none", 1)])
def test_legacy_items_are_grouped_on_shapes_seen_through_thereference_camera(tmp_path, camera, expected_groups):
    from sorterbot_cloud import dedup, geometry
    from sorterbot_cloud.camera import ArmConstants
    from sorterbot_cloud.trigger import with_nominal_shapes

    legacy = ArmConstants.reference(calibrated=False)
    dets = _cubes_and_discs(ArmConstants.reference())
    items = dedup.merge(geometry.locate(dets, legacy), constants=legacy)
    assert len(items) == 4 and all(o.height_mm is None for o in items)
    measured = with_nominal_shapes(items, dets, legacy)
    heights = sorted(o.height_mm for o in measured)
    assert heights[:2] == pytest.approx([3.0, 3.0], abs=4.0) and heights[2:] == pytest.approx([30.0, 30.0], abs=4.0)
    assert [(o.x_mm, o.y_mm, o.position) for o in measured] == [(o.x_mm, o.y_mm, o.position) for o in items]  # legacy positions kept
    # with the detections placed through the reference camera beforehand (as the trigger does): the same shapes
    from sorterbot_cloud.trigger import reference_camera

    placed = {d.detection.detection_id: d for d in geometry.locate(dets, reference_camera(legacy))}
    handed = with_nominal_shapes(items, dets, legacy, placed=placed)
    assert [v for o in handed for v in (o.size_mm, o.height_mm)] == pytest.approx([v for o in measured for v in (o.size_mm, o.height_mm)], abs=1e-6)

    # weights fixed here (not the tuned defaults): identical embeddings, 30 mm vs 3 mm tall
    svc = Service(Settings.load(environ={}, data_dir=tmp_path, legacy_camera=camera, grouping_size_weight=1.0,
                                grouping_height_weight=1.0), detector=FakeDetector(),
                  embedder=FakeEmbedder(), repository=FakeRepository(), archive=FakeArchive())
    svc.embedder.group_distance = 0.175
    labels = svc.trigger.group(with_nominal_shapes(items, dets, legacy) if camera == "reference" else items, 4, camera == "reference")
    assert len(set(labels.tolist())) == expected_groups
    if expected_groups == 2:
        tall = [o.height_mm > 15 for o in measured]
        assert all((labels[i] == labels[j]) == (tall[i] == tall[j]) for i in range(4) for j in range(4))


class CropRecordingEmbedder:
    """Fake embedder: records the crops it is given, answers unit vectors."""

    def __init__(self):
        self.crops = []

    def embed(self, crops):
        self.crops.extend(crops)
        out = np.zeros((len(crops), 8), np.float32)
        out[:, 0] = 1.0
        return out


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.3])
def test_crop_margin_setting_widens_the_embedded_crop(tmp_path, margin):
    recorder = CropRecordingEmbedder()
    service = Service(Settings.load(environ={}, data_dir=tmp_path, crop_margin=margin), detector=FakeDetector(),
                      embedder=recorder, repository=FakeRepository(), archive=FakeArchive())
    image = draw_frame([Rect("red", (100, 60, 140, 100))])  # a 40 x 40 px item, far from the frame's edges
    detections = service.detector.detect(image)
    service.embed_items(image, detections)
    x0, y0, x1, y1 = detections.boxes_xyxy[0]
    (crop,) = recorder.crops
    # the box widened by the margin on each side, its edges rounded outwards to whole pixels
    for side_px, box_side_px in zip(crop.shape[:2], (y1 - y0, x1 - x0), strict=True):
        assert box_side_px * (1 + 2 * margin) <= side_px <= box_side_px * (1 + 2 * margin) + 2


def test_crop_margin_out_of_range_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="crop_margin"):
        Settings.load(environ={}, data_dir=tmp_path, crop_margin=-0.1)
