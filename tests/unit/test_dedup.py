"""Dedup: one object per physical object across frames, never two of one frame."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from sorterbot_cloud import dedup, geometry
from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.structures import CONTAINER_CLASS_ID, ITEM_CLASS_ID, StoredDetection
from tests.unit.test_geometry import (
    CONTAINER_SHAPES,
    FRAME_PWS,
    HEIGHT_PX,
    ITEM_SHAPES,
    WIDTH_PX,
    make_shape,
    observe,
    stored,
)

#: Every frame of the reference sweep, as the trigger passes them to ``dedup.merge``.
FRAMES = [dedup.FrameView(f"{int(pw)}.jpg", float(pw), WIDTH_PX, HEIGHT_PX) for pw in FRAME_PWS]

CALIBRATED = ArmConstants.reference()
LEGACY = ArmConstants.reference(calibrated=False)


def fake_located(i, frame_pw, x, y, size=30.0, score=0.9, class_id=ITEM_CLASS_ID, embedding=None, truncated=False, constants=CALIBRATED):
    """A LocatedDetection placed by hand (geometry is not under test)."""
    det = StoredDetection(i, f"{frame_pw}.jpg", float(frame_pw), 1640, 1232, np.zeros(4, np.float32), score, class_id, embedding)
    r, t = math.hypot(x, y), math.degrees(math.atan2(y, x))
    weight = score * (geometry.TRUNCATED_WEIGHT_FACTOR if truncated else 1.0)
    return geometry.LocatedDetection(det, x, y, r, t, 1475 + t * 1400 / 130, 1200 + r, size, weight, truncated, constants=constants)


def test_same_object_on_several_frames_becomes_one_object():
    located = [fake_located(i, 1000 + 50 * i, 300 + i, 10 - i) for i in range(5)]
    [obj] = dedup.merge(located)
    assert obj.detection_ids == [0, 1, 2, 3, 4]
    assert obj.x_mm == pytest.approx(302.0)
    assert obj.y_mm == pytest.approx(8.0)
    assert obj.position.r_mm == pytest.approx(math.hypot(302, 8))


def test_two_detections_of_one_frame_are_never_merged():
    located = [fake_located(0, 1200, 300, 0), fake_located(1, 1200, 301, 0), fake_located(2, 1250, 300.5, 0)]
    objects = dedup.merge(located)
    assert len(objects) == 2
    for obj in objects:
        frames = [located[i].image_name for i in obj.detection_ids]
        assert len(frames) == len(set(frames))


def test_classes_are_never_merged():
    located = [fake_located(0, 1200, 300, 0), fake_located(1, 1250, 300, 0, class_id=CONTAINER_CLASS_ID)]
    assert sorted(o.class_id for o in dedup.merge(located)) == [ITEM_CLASS_ID, CONTAINER_CLASS_ID]


@pytest.mark.parametrize(
    "distance_mm, constants, expected",
    [(10.0, CALIBRATED, 1), (25.0, CALIBRATED, 2), (25.0, LEGACY, 1), (35.0, LEGACY, 2)],
    ids=["within-threshold", "beyond-threshold", "legacy-within", "legacy-beyond"],
)
def test_threshold_scales_with_size(distance_mm, constants, expected):
    """Two-frame tracks on disjoint frames, ``distance_mm`` apart (threshold 0.6 * 30 = 18,
    legacy 0.6 * 30 * 1.7 = 30.6)."""
    located = [
        fake_located(0, 1200, 300, 0, size=30.0, constants=constants),
        fake_located(1, 1250, 300, 0, size=30.0, constants=constants),
        fake_located(2, 1300, 300 + distance_mm, 0, size=30.0, constants=constants),
        fake_located(3, 1350, 300 + distance_mm, 0, size=30.0, constants=constants),
    ]
    assert len(dedup.merge(located, distance_factor=0.6)) == expected


@pytest.mark.parametrize("distance_mm, expected", [(30.0, 1), (40.0, 2)], ids=["within-reach", "beyond-reach"])
def test_lone_detection_joins_a_nearby_group(distance_mm, expected):
    """A detection alone after linking joins a compatible group within 2x the threshold (36 mm)."""
    located = [fake_located(i, 1200 + 50 * i, 300, 0, size=30.0) for i in range(3)]
    located.append(fake_located(3, 1400, 300 + distance_mm, 0, size=30.0))
    assert len(dedup.merge(located, distance_factor=0.6)) == expected


def test_weighted_average_favours_whole_boxes():
    located = [
        fake_located(0, 1200, 300, 0, score=0.9),
        fake_located(1, 1250, 310, 0, score=0.9, truncated=True),
    ]
    [obj] = dedup.merge(located)
    w_cut = 0.9 * geometry.TRUNCATED_WEIGHT_FACTOR
    assert obj.x_mm == pytest.approx((0.9 * 300 + w_cut * 310) / (0.9 + w_cut))
    assert obj.size_mm == pytest.approx(30.0)


def test_embeddings_are_averaged_and_renormalised():
    e1 = np.array([1.0, 0.0, 0.0], np.float32)
    e2 = np.array([0.0, 1.0, 0.0], np.float32)
    located = [fake_located(0, 1200, 300, 0, embedding=e1), fake_located(1, 1250, 301, 0, embedding=e2)]
    [obj] = dedup.merge(located)
    np.testing.assert_allclose(obj.embedding, [math.sqrt(0.5), math.sqrt(0.5), 0.0], atol=1e-6)
    assert obj.embedding.dtype == np.float32


@pytest.mark.parametrize("score, kept", [(0.3, 0), (0.95, 1)], ids=["low-score-dropped", "high-score-kept"])
def test_single_frame_objects_need_a_high_score(score, kept):
    assert len(dedup.merge([fake_located(0, 1200, 300, 0, score=score)])) == kept


@pytest.mark.parametrize("n_frames, kept", [(2, 0), (3, 1)], ids=["two-weak-dropped", "three-weak-kept"])
def test_few_weak_detections_are_noise(n_frames, kept):
    located = [fake_located(i, 1200 + 50 * i, 300, 0, score=0.55) for i in range(n_frames)]
    assert len(dedup.merge(located)) == kept


def test_confident_links_come_before_weak_ones():
    """A weak box right on top of a confident one cannot steal its place in a track."""
    located = [fake_located(i, 1200 + 50 * i, 300 + 2 * i, 0) for i in range(4)]  # track 1200..1350
    located.append(fake_located(4, 1250, 308.0, 0, score=0.55))  # weak duplicate on frame 1250
    located.append(fake_located(5, 1400, 308.0, 0))  # next frame of the track, nearest the weak box
    objects = dedup.merge(located)
    assert len(objects) == 1
    assert objects[0].detection_ids == [0, 1, 2, 3, 5]


def test_object_ids_items_first_then_by_theta():
    located = [
        fake_located(0, 1200, 300, 100, class_id=CONTAINER_CLASS_ID, size=150),
        fake_located(1, 1200, 300, 50),
        fake_located(2, 1200, 300, -50),
    ]
    objects = dedup.merge(located)
    assert [o.object_id for o in objects] == [0, 1, 2]
    assert [o.detection_ids for o in objects] == [[2], [1], [0]]


def test_result_is_independent_of_input_order():
    rng = np.random.default_rng(4)
    located = [fake_located(i, 1000 + 50 * (i % 6), 200 + 80 * (i // 6) + rng.normal(0, 2), rng.normal(0, 2)) for i in range(18)]
    a = dedup.merge(located)
    b = dedup.merge(located[::-1])
    assert [o.detection_ids for o in a] == [o.detection_ids for o in b]
    assert len(a) == 3


def test_bad_distance_factor_raises():
    with pytest.raises(ValueError, match="distance_factor"):
        dedup.merge([fake_located(0, 1200, 300, 0)], distance_factor=0)


# ------------------------------------------------------- simulated multi-frame sessions


def _simulated_session(rng, constants, n_items, n_containers, box_noise_px=3.0, miss_rate=0.1, n_false=2, n_phantoms=0, phantoms_out=None):
    """Stored detections of a random table seen by the reference arm, and the true count.

    ``n_phantoms`` false containers (a distractor or a patch of table taken for a
    container) are each reported with a confident score (0.7..0.85) on 3 consecutive
    frames of the several that show their spot, the failure of the shipped detector that
    view support exists for; their positions are appended to ``phantoms_out``.
    """
    placed: list[tuple[float, float, float]] = []
    dets: list[StoredDetection] = []
    truth = []

    def place(radius, r_range):
        for _ in range(500):
            r = math.sqrt(rng.uniform(r_range[0] ** 2, r_range[1] ** 2))
            t = math.radians(rng.uniform(-40, 40))
            x, y = r * math.cos(t), r * math.sin(t)
            if all(math.hypot(x - px, y - py) > radius + pr + 6 for px, py, pr in placed):
                placed.append((x, y, radius))
                return x, y
        return None

    for _ in range(n_phantoms):
        pts = make_shape(CONTAINER_SHAPES[0], rng)
        pos = place(float(np.hypot(pts[:, 0], pts[:, 1]).max()), (200, 450))
        if pos is None:
            continue
        seen = observe(pts + [pos[0], pos[1], 0], constants)
        start = int(rng.integers(0, max(1, len(seen) - 3)))
        if phantoms_out is not None:
            phantoms_out.append((pos, len(seen[start:start + 3])))
        for pw, box in seen[start:start + 3]:
            dets.append(stored(len(dets), pw, box, CONTAINER_CLASS_ID, score=float(rng.uniform(0.7, 0.85))))
    for k in range(n_items + n_containers):
        container = k < n_containers
        kind = (CONTAINER_SHAPES if container else ITEM_SHAPES)[rng.integers(3)]
        pts = make_shape(kind, rng)
        pos = place(float(np.hypot(pts[:, 0], pts[:, 1]).max()), (200, 450) if container else (180, 430))
        if pos is None:
            continue
        truth.append((container, pos[0], pos[1]))
        for pw, box in observe(pts + [pos[0], pos[1], 0], constants):
            if rng.random() < miss_rate:
                continue
            w, h = box[2] - box[0], box[3] - box[1]
            # detector noise on the object's extent; a side cut by the border stays on it
            cut = (box <= 0.5) | (box >= [1638.5, 1230.5, 1638.5, 1230.5])
            noisy = np.where(cut, box, box + rng.normal(0, box_noise_px, 4))
            noisy = np.clip(np.sort(noisy.reshape(2, 2), axis=0).reshape(4), 0, [1639, 1231, 1639, 1231])
            if noisy[2] - noisy[0] < 0.3 * w or noisy[3] - noisy[1] < 0.3 * h:
                continue
            dets.append(stored(len(dets), pw, noisy, CONTAINER_CLASS_ID if container else ITEM_CLASS_ID, score=float(rng.uniform(0.75, 1.0))))
    for _ in range(n_false):  # low-score one-frame false positives
        pw = float(rng.choice(range(1000, 1951, 50)))
        x0, y0 = rng.uniform(0, 1500), rng.uniform(0, 1100)
        dets.append(stored(len(dets), pw, (x0, y0, x0 + 60, y0 + 60), ITEM_CLASS_ID, score=float(rng.uniform(0.5, 0.59))))
    return dets, truth


@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "legacy"])
def test_counts_exact_in_simulated_sessions(calibrated):
    constants = ArmConstants.reference()
    run_constants = ArmConstants.reference(calibrated=calibrated)
    rng = np.random.default_rng(20 if calibrated else 21)
    n_sessions, exact = 20, 0
    failures = []
    for s in range(n_sessions):
        dets, truth = _simulated_session(rng, constants, int(rng.integers(3, 9)), int(rng.integers(1, 5)))
        n_items, n_containers = sum(not t[0] for t in truth), sum(t[0] for t in truth)
        objects = dedup.merge(geometry.locate(dets, run_constants), constants=run_constants)
        found = (sum(o.class_id == ITEM_CLASS_ID for o in objects), sum(o.class_id == CONTAINER_CLASS_ID for o in objects))
        if found == (n_items, n_containers):
            exact += 1
        else:
            failures.append((s, found, (n_items, n_containers)))
    print(f"exact {exact}/{n_sessions}", failures)
    assert exact >= 0.95 * n_sessions, failures


@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "legacy"])
def test_view_support_drops_phantom_containers_and_keeps_real_objects(calibrated):
    """With the session's frames, confident false containers seen on 3 of the frames that
    show their spot are dropped, while every real object (10 % of its boxes missed) stays;
    without the frames the same phantoms survive, so the frames are what removes them."""
    constants = ArmConstants.reference()
    run_constants = ArmConstants.reference(calibrated=calibrated)
    rng = np.random.default_rng(30 if calibrated else 31)
    n_sessions, exact, with_phantom, phantom_kept_without_frames = 20, 0, 0, 0
    failures = []

    def counts(objects):
        return (sum(o.class_id == ITEM_CLASS_ID for o in objects), sum(o.class_id == CONTAINER_CLASS_ID for o in objects))

    for s in range(n_sessions):
        phantoms: list = []
        dets, truth = _simulated_session(
            rng, constants, int(rng.integers(3, 7)), int(rng.integers(1, 4)), n_phantoms=1, phantoms_out=phantoms
        )
        expected = (sum(not t[0] for t in truth), sum(t[0] for t in truth))
        located = geometry.locate(dets, run_constants)
        found = counts(dedup.merge(located, constants=run_constants, frames=FRAMES))
        exact += found == expected
        if found != expected:
            failures.append((s, found, expected))
        if phantoms:
            with_phantom += 1
            phantom_kept_without_frames += counts(dedup.merge(located, constants=run_constants))[1] > expected[1]
    print(f"exact {exact}/{n_sessions} with frames; phantom kept without frames {phantom_kept_without_frames}/{with_phantom}", failures)
    assert exact >= 0.9 * n_sessions, failures
    assert with_phantom >= 10
    assert phantom_kept_without_frames >= 0.8 * with_phantom


def test_view_support_counts_the_frames_that_show_the_object():
    """An object detected on every frame that shows it has support about 1; the same
    object detected on a third of them about 1/3; its expected count does not change."""
    constants = ArmConstants.reference()
    pts = make_shape("box", np.random.default_rng(0)) + [300.0, 0.0, 0.0]
    seen = observe(pts, constants, min_visible=0.0)
    dets = [stored(i, pw, box, CONTAINER_CLASS_ID, score=1.0) for i, (pw, box) in enumerate(seen)]
    located = geometry.locate(dets, constants)
    [obj] = dedup.merge(located, constants=constants)
    support, expected = dedup.view_support(obj, located, FRAMES, constants)
    # boxes are reported wherever part of the object shows; its centre is on fewer frames
    assert 8 <= expected <= len(seen)
    assert support == pytest.approx(len(seen) / expected)
    assert 1.0 <= support <= 1.5
    support_third, expected_third = dedup.view_support(obj, located[::3], FRAMES, constants)
    assert expected_third == expected
    assert support_third == pytest.approx(len(located[::3]) / expected)
    # the bar is per class: a zero bar keeps what the default drops
    sparse = located[:3]
    assert dedup.merge(sparse, constants=constants, frames=FRAMES) == []
    assert len(dedup.merge(sparse, constants=constants, frames=FRAMES, min_view_support={CONTAINER_CLASS_ID: 0.0})) == 1


def test_position_p95_within_15_mm_in_simulated_sessions():
    """Calibrated sessions: box noise 3 px, 10 % missed boxes; each found object against
    the nearest true object of its class."""
    constants = ArmConstants.reference()
    rng = np.random.default_rng(22)
    errors = {"item": [], "container": []}
    for _ in range(12):
        dets, truth = _simulated_session(rng, constants, int(rng.integers(3, 9)), int(rng.integers(1, 5)))
        for obj in dedup.merge(geometry.locate(dets, constants)):
            container = obj.class_id == CONTAINER_CLASS_ID
            nearest = min(math.hypot(obj.x_mm - x, obj.y_mm - y) for c, x, y in truth if c == container)
            errors["container" if container else "item"].append(nearest)
    all_errors = errors["item"] + errors["container"]
    print({k: (len(v), round(float(np.median(v)), 1), round(float(np.percentile(v, 95)), 1)) for k, v in errors.items()})
    assert len(errors["container"]) >= 20
    assert np.percentile(all_errors, 95) <= 15.0
    # containers alone: p95 ~30 mm, from tall (up to 80 mm) 220 mm bowls cut by the top and side
    # of every frame they are on, whose height the boxes leave open (see the report). With
    # geometry.BORDER_MARGIN_REL (sides within 5 % of the box's extent of the border count as
    # cut, for detector boxes that stop short of it) these unbiased boxes lose a few real sides:
    # p95 29.5 -> 32.2 mm here (single-frame averages, no multi-frame refinement).
    assert np.percentile(errors["container"], 95) <= 33.0
    assert np.median(errors["container"]) <= 5.0


def test_contained_container_box_is_dropped_but_items_and_other_frames_are_not():
    """Of two container boxes of one frame, one 90 % inside the other, the less confident
    goes (a part of the container, or a table region around it); side-by-side boxes, items
    and boxes of other frames stay."""
    whole = stored(0, 1000, (100, 100, 600, 500), CONTAINER_CLASS_ID, score=0.95)
    part = stored(1, 1000, (120, 120, 400, 480), CONTAINER_CLASS_ID, score=0.8)
    beside = stored(2, 1000, (650, 100, 900, 400), CONTAINER_CLASS_ID, score=0.9)
    item_in = stored(3, 1000, (200, 200, 240, 240), ITEM_CLASS_ID, score=0.9)
    other_frame = stored(4, 1050, (120, 120, 400, 480), CONTAINER_CLASS_ID, score=0.8)
    located = geometry.locate([whole, part, beside, item_in, other_frame], CALIBRATED)
    kept = [d.detection.detection_id for d in dedup.suppress_contained(located)]
    assert kept == [0, 2, 3, 4]
    # a box scoring higher than the larger box around it wins: the larger is the wrong guess
    strong_part = stored(1, 1000, (120, 120, 400, 480), CONTAINER_CLASS_ID, score=0.99)
    located = geometry.locate([whole, strong_part, item_in], CALIBRATED)
    assert [d.detection.detection_id for d in dedup.suppress_contained(located)] == [1, 3]


def test_an_item_boxed_twice_on_a_frame_is_one_detection_but_neighbours_stay():
    """The boxes of the tuning session that split a domino in legacy mode (IoU 0.47, 74 %
    of the smaller inside the larger): the weaker goes. Two neighbouring items whose boxes
    overlap by half of the smaller stay two."""
    larger = stored(0, 1500, (452, 800, 658, 1029), ITEM_CLASS_ID, score=0.88)
    smaller = stored(1, 1500, (503, 774, 684, 972), ITEM_CLASS_ID, score=0.65)
    located = geometry.locate([larger, smaller], CALIBRATED)
    assert [d.detection.detection_id for d in dedup.suppress_contained(located, class_ids=(ITEM_CLASS_ID,))] == [0]
    assert [o.detection_ids for o in dedup.merge(located, constants=CALIBRATED)] == [[0]]
    left = stored(2, 1500, (100, 100, 200, 200), ITEM_CLASS_ID, score=0.9)
    right = stored(3, 1500, (150, 110, 250, 190), ITEM_CLASS_ID, score=0.95)  # 40 % of left inside right
    located = geometry.locate([left, right], CALIBRATED)
    assert [d.detection.detection_id for d in dedup.suppress_contained(located, class_ids=(ITEM_CLASS_ID,))] == [2, 3]


def test_merge_keeps_one_object_for_an_item_with_part_boxes():
    """A domino-like item reported on every frame as a whole box plus a weaker box on one
    half becomes one object, not two (the cannot-link rule alone would keep two)."""
    constants = ArmConstants.reference()
    pts = make_shape("cube", np.random.default_rng(3)) * [2.0, 1.0, 0.5] + [320.0, 20.0, 0.0]
    dets = []
    for pw, box in observe(pts, constants):
        x0, y0, x1, y1 = box
        dets.append(stored(len(dets), pw, box, ITEM_CLASS_ID, score=0.95))
        dets.append(stored(len(dets), pw, (x0, y0, (x0 + x1) / 2, y1), ITEM_CLASS_ID, score=0.7))
    located = geometry.locate(dets, constants)
    objects = dedup.merge(located, constants=constants, frames=FRAMES)
    assert len(objects) == 1
    assert len(objects[0].detection_ids) == len(dets) // 2


def _halves_session(constants, offset_mm=(0.0, 0.0)):
    """A domino-like item boxed whole on most frames but as its two overlapping halves
    (each 60 % of the box wide) on the first five: the halves form a second group."""
    pts = make_shape("cube", np.random.default_rng(3)) * [2.0, 1.0, 0.5] + [320.0 + offset_mm[0], 20.0 + offset_mm[1], 0.0]
    dets = []
    for k, (pw, box) in enumerate(observe(pts, constants)):
        x0, y0, x1, y1 = box
        if k < 5:
            dets.append(stored(len(dets), pw, (x0, y0, x0 + 0.6 * (x1 - x0), y1), ITEM_CLASS_ID, score=0.9))
            dets.append(stored(len(dets), pw, (x1 - 0.6 * (x1 - x0), y0, x1, y1), ITEM_CLASS_ID, score=0.8))
        else:
            dets.append(stored(len(dets), pw, box, ITEM_CLASS_ID, score=0.95))
    return dets


def test_part_box_groups_of_one_item_are_joined_in_calibrated_mode():
    """The two halves' groups overlap on every frame they share and sit within the link
    threshold: one object, one detection per frame. Without the join (or in legacy mode,
    where it is off) the halves stay two objects."""
    dets = _halves_session(CALIBRATED)
    n_frames = len({d.image_name for d in dets})
    located = geometry.locate(dets, CALIBRATED)
    [obj] = dedup.merge(located, constants=CALIBRATED, frames=FRAMES)
    frames = [located[i].image_name for i in obj.detection_ids]
    assert len(frames) == len(set(frames)) == n_frames
    assert math.hypot(obj.x_mm - 320.0, obj.y_mm - 20.0) < 15.0
    groups = dedup.group(located)
    assert len(groups) == 2
    assert dedup.merge_part_groups(located, groups, min_ioa=2.0) == groups  # off
    legacy = geometry.locate(dets, LEGACY)
    assert dedup.merge_part_groups(legacy, dedup.group(legacy)) == dedup.group(legacy)


def test_part_box_join_needs_overlap_on_every_shared_frame():
    """Two groups close on the table whose boxes are apart on a frame they share are not
    one object boxed twice."""
    located = [fake_located(0, 1000, 300, 0), fake_located(1, 1050, 301, 0), fake_located(2, 1000, 305, 0), fake_located(3, 1100, 306, 0)]
    boxes = {0: (100, 100, 200, 200), 1: (150, 100, 250, 200), 2: (300, 100, 400, 200), 3: (200, 100, 300, 200)}
    located = [dataclasses.replace(d, detection=dataclasses.replace(d.detection, box_xyxy=np.array(boxes[i], np.float32))) for i, d in enumerate(located)]
    groups = [[0, 1], [2, 3]]
    assert dedup.merge_part_groups(located, groups) == groups
    boxes[2] = (140, 100, 240, 200)  # now 60 % of one inside the other on the shared frame
    located = [dataclasses.replace(d, detection=dataclasses.replace(d.detection, box_xyxy=np.array(boxes[i], np.float32))) for i, d in enumerate(located)]
    assert dedup.merge_part_groups(located, groups) == [[0, 1, 3]]  # the larger box of the shared frame stays (equal: the first group's)


def test_merged_objects_carry_their_fitted_height_in_calibrated_mode_only():
    """A 30 mm cube and a 3 mm-thick disc of similar footprint: the merged objects' heights
    (from the multi-frame fit) tell them apart; legacy mode has no metric height."""
    from tests.unit.test_geometry import _cuboid, _ring

    cube = _cuboid(30.0, 30.0, 30.0) + [300.0, -40.0, 0.0]
    disc = np.concatenate([_ring(18.0, 0.0), _ring(18.0, 3.0)]) + [320.0, 60.0, 0.0]
    dets = []
    for pts in (cube, disc):
        for pw, box in observe(pts, CALIBRATED):
            dets.append(stored(len(dets), pw, box))
    objects = dedup.merge(geometry.locate(dets, CALIBRATED), constants=CALIBRATED)
    assert len(objects) == 2
    by_y = sorted(objects, key=lambda o: o.y_mm)  # the cube first
    assert by_y[0].height_mm == pytest.approx(30.0, abs=4.0)
    assert by_y[1].height_mm == pytest.approx(3.0, abs=4.0)
    legacy = dedup.merge(geometry.locate(dets, LEGACY), constants=LEGACY)
    assert len(legacy) == 2 and all(o.height_mm is None for o in legacy)


def test_legacy_view_support_through_an_assumed_camera_drops_a_lone_corner_detection():
    """A confident false item seen on one frame only, in the bottom corner of the frame:
    by bearing alone (legacy mode) it falls outside most frames' windows and is kept;
    placed through the reference camera, the frames that should show it are counted as in
    calibrated mode, it has too little support and is dropped. Real objects stay."""
    rng = np.random.default_rng(40)
    dets, truth = _simulated_session(rng, CALIBRATED, 4, 1, n_false=0)
    dets.append(stored(len(dets), 1750.0, (63.5, 952.2, 166.7, 1219.1), ITEM_CLASS_ID, score=0.87))
    n_true = len(truth)
    located = geometry.locate(dets, LEGACY)
    plain = dedup.merge(located, constants=LEGACY, frames=FRAMES)
    assumed = dedup.merge(located, constants=LEGACY, frames=FRAMES, legacy_camera=CALIBRATED)
    assert len(plain) == n_true + 1
    assert len(assumed) == n_true
    assert [o.position for o in assumed] == [o.position for o in plain if o.detection_ids != [len(dets) - 1]]
    # the trigger places the detections through the camera once and hands them in: same objects
    placed = {d.detection.detection_id: d for d in geometry.locate(dets, CALIBRATED)}
    handed = dedup.merge(located, constants=LEGACY, frames=FRAMES, legacy_camera=CALIBRATED, legacy_placed=placed)
    assert [(o.detection_ids, o.position) for o in handed] == [(o.detection_ids, o.position) for o in assumed]


def test_an_assumed_camera_that_does_not_fit_the_session_is_not_used():
    """Frames 200 µs apart with every object on one frame only: through the reference
    camera each object should be on ~3 frames, so the camera does not explain the session
    (median support ~0.3) and view support falls back to the bearing window: nothing is lost."""
    boxes = [(1000.0, (700, 900, 780, 980)), (1200.0, (300, 700, 380, 780)), (1400.0, (1000, 800, 1080, 880)),
             (1600.0, (500, 600, 580, 680)), (1800.0, (900, 1000, 980, 1080))]
    dets = [stored(i, pw, box, ITEM_CLASS_ID, score=0.95) for i, (pw, box) in enumerate(boxes)]
    frames = [dedup.FrameView(f"{int(pw)}.jpg", pw, WIDTH_PX, HEIGHT_PX) for pw, _ in boxes]
    located = geometry.locate(dets, LEGACY)
    plain = dedup.merge(located, constants=LEGACY, frames=frames)
    assumed = dedup.merge(located, constants=LEGACY, frames=frames, legacy_camera=CALIBRATED)
    assert len(plain) >= 4 and [o.detection_ids for o in assumed] == [o.detection_ids for o in plain]
    # trusted blindly, the camera would have dropped objects: their support under it is below the bar
    placed = dedup.merge(geometry.locate(dets, CALIBRATED), constants=CALIBRATED)
    expected = dedup._frames_showing(placed, frames, CALIBRATED, None)
    supports = [0.95 * len(o.detection_ids) / n for o, n in zip(placed, expected, strict=True) if n >= dedup.MIN_EXPECTED_FRAMES]
    assert supports and np.median(supports) < dedup.MIN_ASSUMED_CAMERA_SUPPORT
