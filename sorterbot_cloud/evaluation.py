"""Score a session's result against the simulator's ground truth (docs/design.rst, Evaluation).

Found objects are matched to true objects through their detections: each detection
behind a found object is compared with the ground-truth boxes of the same frame and
class; the true box with the highest IoU (at least :data:`MATCH_IOU`) gets the
detection's vote, and the object goes to the true object with most votes (ties: the
higher summed IoU, then the lower true id). This needs no position, so it works in the
legacy mode too, whose positions are not in millimetres.

Per session (:class:`SessionScore`): found-minus-true object count per class, position
errors of matched objects (calibrated mode only), adjusted Rand index of the item groups
against the true item types (over the items matched to a true item), and whether the
session is sorted correctly:

- every true item is matched by exactly one found item, which gets exactly one command,
  and no command picks something that is not a true item;
- every command drops into a found object matched to a true container;
- no true item type is split across containers;
- where there are at least as many true containers as true item types, no container
  receives two types.

:func:`aggregate` summarises many sessions (:class:`AggregateScore`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score

from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.structures import CLASS_NAMES, pairwise_iou

#: Least IoU between a found detection's box and a ground-truth box to vote for it.
MATCH_IOU = 0.5


@dataclass(frozen=True)
class SessionScore:
    """Scores of one session.

    Parameters
    ----------
    session_id : str
    mode : {'calibrated', 'legacy'}
    n_true, n_found : dict
        Object counts per class name (``item``, ``container``).
    count_error : dict
        ``n_found - n_true`` per class name.
    counts_exact : bool
        Every class count exact.
    matched : dict
        ``found object_id -> true object_id`` (absent when no detection matched).
    missed : list of int
        True object ids no found object matched.
    duplicates : list of int
        True object ids matched by more than one found object.
    spurious : list of int
        Found object ids that matched no true object.
    position_errors_mm : list of float
        Distance from each matched found object to its true footprint centre
        (calibrated mode only; empty in legacy mode).
    position_median_mm, position_p95_mm : float or None
        Median and 95th percentile of ``position_errors_mm`` (None when empty).
    ari : float or None
        Adjusted Rand index of item ``cluster_id`` vs true type over matched items
        (None with fewer than 2 matched items).
    sorted_correctly : bool
    problems : list of str
        Why the session is not sorted correctly (empty when it is).
    position_errors_by_class_mm : dict
        ``position_errors_mm`` split by the true object's class name (``item``,
        ``container``; calibrated mode only).
    """

    session_id: str
    mode: str
    n_true: dict
    n_found: dict
    count_error: dict
    counts_exact: bool
    matched: dict
    missed: list
    duplicates: list
    spurious: list
    position_errors_mm: list
    position_median_mm: float | None
    position_p95_mm: float | None
    ari: float | None
    sorted_correctly: bool
    problems: list = field(default_factory=list)
    position_errors_by_class_mm: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"matched": {str(k): v for k, v in self.matched.items()}}


@dataclass(frozen=True)
class AggregateScore:
    """Summary of many sessions.

    Parameters
    ----------
    n_sessions : int
    share_counts_exact : float
        Share of sessions whose object counts are exact for both classes.
    position_median_mm, position_p95_mm : float or None
        Over all matched objects of all calibrated sessions.
    share_sorted_correctly : float
    mean_ari : float or None
        Mean over sessions that have an ARI.
    position_p95_by_class_mm : dict
        Class name -> 95th percentile of the position errors of that class's matched
        objects over all calibrated sessions (None for a class without any).
    """

    n_sessions: int
    share_counts_exact: float
    position_median_mm: float | None
    position_p95_mm: float | None
    share_sorted_correctly: float
    mean_ari: float | None
    position_p95_by_class_mm: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def fold_indices(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Split ``range(n)`` into ``folds`` shuffled parts of near-equal size (k-fold cross-validation).

    The parts are a seeded permutation of ``0 .. n-1`` cut into ``folds`` pieces
    (``numpy.array_split``), each sorted; the same ``(n, folds, seed)`` always gives the
    same parts. Used by ``adapt-detector`` (frames) and by ``crops-from-voc`` /
    ``evaluate-real-grouping`` (photos), so that one seed names one split everywhere.

    Parameters
    ----------
    n : int
        Number of things (frames, photos) to split.
    folds : int
        Number of parts, ``2 .. n``.
    seed : int
        Seed of the permutation (``numpy.random.default_rng``).

    Returns
    -------
    list of ndarray of shape (n_i,), int64
        Disjoint parts whose union is ``range(n)``.

    Raises
    ------
    ValueError
        If ``folds`` is not in 2..n.
    """
    if not 2 <= folds <= n:
        raise ValueError(f"k-fold needs 2 <= folds <= items, got {folds} folds for {n} items")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def _require(mapping: Any, key: str, where: str):
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise BadRequest(f"{where} must be an object with key {key!r}")
    return mapping[key]


def match_objects(ground_truth: Mapping, result: Mapping) -> dict[int, int]:
    """Match found objects to true objects by box votes (module docstring).

    Returns
    -------
    dict
        ``found object_id -> true object_id`` for found objects with at least one vote.

    Raises
    ------
    BadRequest
        If ``ground_truth`` or ``result`` lacks the keys of their schemas.
    """
    gt_boxes: dict[tuple[str, str], tuple[list[int], np.ndarray]] = {}
    for frame in _require(ground_truth, "frames", "ground_truth"):
        name = _require(frame, "image_name", "ground_truth frame")
        per_class: dict[str, list] = defaultdict(list)
        for box in _require(frame, "boxes", "ground_truth frame"):
            per_class[box["class"]].append((int(box["object_id"]), box["box_xyxy"]))
        for cls, entries in per_class.items():
            gt_boxes[(name, cls)] = ([e[0] for e in entries], np.array([e[1] for e in entries], float).reshape(-1, 4))
    matched = {}
    for obj in _require(result, "objects", "result"):
        votes: Counter = Counter()
        iou_sum: dict[int, float] = defaultdict(float)
        for det in obj.get("detections", []):
            entry = gt_boxes.get((det["image_name"], obj["class"]))
            if entry is None:
                continue
            ids, boxes = entry
            ious = pairwise_iou(det["box_xyxy"], boxes)[0]
            best = int(np.argmax(ious))
            if ious[best] >= MATCH_IOU:
                votes[ids[best]] += 1
                iou_sum[ids[best]] += float(ious[best])
        if votes:
            matched[int(obj["object_id"])] = min(votes, key=lambda t: (-votes[t], -iou_sum[t], t))
    return matched


def score_session(ground_truth: Mapping, result: Mapping) -> SessionScore:
    """Score one session's rich trigger result against its ground truth.

    Parameters
    ----------
    ground_truth : mapping
        The simulator's ``ground_truth.json`` (CONTRIBUTING.md): ``objects`` with
        ``object_id, class, type, x_mm, y_mm``; ``frames`` with ``image_name`` and
        ``boxes`` (``object_id, class, box_xyxy``).
    result : mapping
        The rich trigger response: ``mode``, ``objects`` (``object_id, class, x_mm,
        y_mm, cluster_id, detections: [{image_name, box_xyxy, ...}]``) and ``commands``
        (``pick: {object_id, ...}, place: {object_id, ...}, cluster_id``).

    Returns
    -------
    SessionScore

    Raises
    ------
    BadRequest
        If a required key is missing.
    """
    true_objects = {int(o["object_id"]): o for o in _require(ground_truth, "objects", "ground_truth") if o.get("class") in CLASS_NAMES}
    found = {int(o["object_id"]): o for o in _require(result, "objects", "result")}
    commands = list(_require(result, "commands", "result"))
    mode = str(result.get("mode", "legacy"))
    matched = match_objects(ground_truth, result)

    n_true = {c: sum(o["class"] == c for o in true_objects.values()) for c in CLASS_NAMES}
    n_found = {c: sum(o["class"] == c for o in found.values()) for c in CLASS_NAMES}
    count_error = {c: n_found[c] - n_true[c] for c in CLASS_NAMES}
    hits = Counter(matched.values())
    missed = sorted(t for t in true_objects if hits[t] == 0)
    duplicates = sorted(t for t in true_objects if hits[t] > 1)
    spurious = sorted(f for f in found if f not in matched)

    errors: list[float] = []
    errors_by_class: dict[str, list[float]] = {c: [] for c in CLASS_NAMES}
    if mode == "calibrated":
        for f, t in sorted(matched.items()):
            error = float(np.hypot(found[f]["x_mm"] - true_objects[t]["x_mm"], found[f]["y_mm"] - true_objects[t]["y_mm"]))
            errors.append(error)
            errors_by_class[true_objects[t]["class"]].append(error)

    item_pairs = [
        (true_objects[t]["type"], found[f]["cluster_id"])
        for f, t in sorted(matched.items())
        if found[f]["class"] == "item" and true_objects[t]["class"] == "item" and found[f].get("cluster_id") is not None
    ]
    ari = float(adjusted_rand_score([p[0] for p in item_pairs], [p[1] for p in item_pairs])) if len(item_pairs) >= 2 else None

    problems = _sorting_problems(true_objects, found, matched, commands, missed, duplicates)
    return SessionScore(
        session_id=str(result.get("session_id", ground_truth.get("session_id", ""))),
        mode=mode,
        n_true=n_true,
        n_found=n_found,
        count_error=count_error,
        counts_exact=all(v == 0 for v in count_error.values()),
        matched=matched,
        missed=missed,
        duplicates=duplicates,
        spurious=spurious,
        position_errors_mm=errors,
        position_median_mm=float(np.median(errors)) if errors else None,
        position_p95_mm=float(np.percentile(errors, 95)) if errors else None,
        ari=ari,
        sorted_correctly=not problems,
        problems=problems,
        position_errors_by_class_mm=errors_by_class,
    )


def _sorting_problems(true_objects, found, matched, commands, missed, duplicates) -> list[str]:
    """Reasons the session is not sorted correctly (docs/design.rst, Evaluation)."""
    problems = []
    true_items = {t for t, o in true_objects.items() if o["class"] == "item"}
    true_containers = {t for t, o in true_objects.items() if o["class"] == "container"}
    missed_items = sorted(set(missed) & true_items)
    if missed_items:
        problems.append(f"true items {missed_items} were not found")
    dup_items = sorted(set(duplicates) & true_items)
    if dup_items:
        problems.append(f"true items {dup_items} were found more than once")
    picks: Counter = Counter()
    type_to_containers: dict[str, set] = defaultdict(set)
    container_to_types: dict[int, set] = defaultdict(set)
    for k, command in enumerate(commands):
        pick_id = int(command["pick"]["object_id"])
        place_id = int(command["place"]["object_id"])
        true_pick = matched.get(pick_id)
        true_place = matched.get(place_id)
        if true_pick not in true_items:
            problems.append(f"command {k} picks object {pick_id}, which is not a true item")
            continue
        picks[true_pick] += 1
        if true_place not in true_containers:
            problems.append(f"command {k} drops into object {place_id}, which is not a true container")
            continue
        item_type = true_objects[true_pick]["type"]
        type_to_containers[item_type].add(true_place)
        container_to_types[true_place].add(item_type)
    uncommanded = sorted(t for t in true_items if picks[t] == 0 and t not in missed_items)
    if uncommanded:
        problems.append(f"true items {uncommanded} get no command")
    repeated = sorted(t for t in true_items if picks[t] > 1)
    if repeated:
        problems.append(f"true items {repeated} get more than one command")
    for item_type, targets in sorted(type_to_containers.items()):
        if len(targets) > 1:
            problems.append(f"type {item_type!r} is split across containers {sorted(targets)}")
    n_types = len({true_objects[t]["type"] for t in true_items})
    if len(true_containers) >= n_types:
        for container, types in sorted(container_to_types.items()):
            if len(types) > 1:
                problems.append(f"container {container} receives {len(types)} types {sorted(types)}")
    return problems


def aggregate(scores: Sequence[SessionScore]) -> AggregateScore:
    """Summarise many sessions' scores (the issue's acceptance figures).

    Parameters
    ----------
    scores : sequence of SessionScore

    Returns
    -------
    AggregateScore
        Shares are 0 and figures None for an empty sequence.
    """
    n = len(scores)
    errors = [e for s in scores for e in s.position_errors_mm]
    by_class = {c: [e for s in scores for e in s.position_errors_by_class_mm.get(c, [])] for c in CLASS_NAMES}
    aris = [s.ari for s in scores if s.ari is not None]
    return AggregateScore(
        n_sessions=n,
        share_counts_exact=sum(s.counts_exact for s in scores) / n if n else 0.0,
        position_median_mm=float(np.median(errors)) if errors else None,
        position_p95_mm=float(np.percentile(errors, 95)) if errors else None,
        share_sorted_correctly=sum(s.sorted_correctly for s in scores) / n if n else 0.0,
        mean_ari=float(np.mean(aris)) if aris else None,
        position_p95_by_class_mm={c: float(np.percentile(v, 95)) if v else None for c, v in by_class.items()},
    )


def result_to_dict(
    objects: Sequence,
    commands: Sequence,
    mode: str,
    reason: str | None,
    detections: Sequence,
    cluster_ids: Mapping[int, int] | None = None,
    arm_id: str | None = None,
    session_id: str | None = None,
) -> dict:
    """Build the rich trigger result that :func:`score_session` reads.

    Parameters
    ----------
    objects : sequence of ArmObject
        From :func:`sorterbot_cloud.dedup.merge`.
    commands : sequence of Command
        From :func:`sorterbot_cloud.planner.plan`, in execution order.
    mode : {'calibrated', 'legacy'}
    reason : str or None
        Why ``commands`` is empty, else None.
    detections : sequence of StoredDetection
        The session's detections (their boxes are listed under each object).
    cluster_ids : mapping, optional
        ``object_id -> cluster_id`` of the items.
    arm_id, session_id : str, optional

    Returns
    -------
    dict
        ``{"arm_id", "session_id", "mode", "reason", "objects": [...], "commands": [...]}``
        with numbers rounded to 3 decimals (boxes 2, scores 4), JSON-ready.
    """
    by_id = {int(d.detection_id): d for d in detections}
    cluster_ids = dict(cluster_ids or {})

    def position(obj) -> dict:
        return {
            "object_id": int(obj.object_id),
            "pw0": round(float(obj.position.pw0), 3),
            "pw1": round(float(obj.position.pw1), 3),
            "r_mm": round(float(obj.position.r_mm), 3),
            "theta_deg": round(float(obj.position.theta_deg), 3),
        }

    records = []
    for obj in objects:
        dets = [by_id[i] for i in obj.detection_ids if i in by_id]
        records.append(
            {
                "object_id": int(obj.object_id),
                "class": CLASS_NAMES[int(obj.class_id)],
                "x_mm": round(float(obj.x_mm), 3),
                "y_mm": round(float(obj.y_mm), 3),
                "r_mm": round(float(obj.position.r_mm), 3),
                "theta_deg": round(float(obj.position.theta_deg), 3),
                "pw0": round(float(obj.position.pw0), 3),
                "pw1": round(float(obj.position.pw1), 3),
                "size_mm": round(float(obj.size_mm), 3),
                "score": round(float(obj.score), 4),
                "cluster_id": cluster_ids.get(int(obj.object_id)),
                "detections": [
                    {
                        "detection_id": int(d.detection_id),
                        "image_name": d.image_name,
                        "box_xyxy": [round(float(v), 2) for v in np.asarray(d.box_xyxy).reshape(-1)],
                        "score": round(float(d.score), 4),
                    }
                    for d in dets
                ],
            }
        )
    return {
        "arm_id": arm_id,
        "session_id": session_id,
        "mode": mode,
        "reason": reason,
        "objects": records,
        "commands": [{"pick": position(c.item), "place": position(c.container), "cluster_id": int(c.cluster_id)} for c in commands],
    }


def oracle_session(
    seed: int,
    calibrated: bool = True,
    box_noise_px: float = 2.0,
    miss_rate: float = 0.05,
    n_false: int = 1,
    heldout: bool = True,
) -> tuple[dict, dict, list]:
    """A simulated session's ground truth and "detections" from its true boxes, no rendering.

    Scores the trigger's geometry, dedup and planning apart from the detector and
    embedder: detections are the simulator's ground-truth boxes (:func:`sim.session.frame_boxes`)
    with Gaussian noise on every side not cut by the image border, a share of them
    dropped, plus low-score false positives; item embeddings are a random unit vector
    per item type plus noise. Scene content follows the issue's benchmark: 3 to 8 items
    of 2 to 4 types, 1 to 4 containers, one distractor.

    Parameters
    ----------
    seed : int
    calibrated : bool
        Constants with the camera block (else legacy constants).
    box_noise_px : float
        Sigma of the noise on box sides (pixels).
    miss_rate : float
        Share of true boxes dropped.
    n_false : int
        One-frame false-positive item boxes with score 0.55.
    heldout : bool
        Draw item types from the held-out split.

    Returns
    -------
    ground_truth : dict
        In the simulator's schema (frames without images).
    constants : dict
        The trigger body (``ArmConstants.to_mapping()``).
    detections : list of StoredDetection

    Raises
    ------
    BadRequest
        If the simulator cannot place the scene's objects.
    """
    from sorterbot_cloud.camera import ArmConstants
    from sorterbot_cloud.sim.scene import choose_item_types, generate_scene, split_pools
    from sorterbot_cloud.sim.session import DEFAULT_PULSE_WIDTHS, frame_boxes
    from sorterbot_cloud.structures import ITEM_CLASS_ID, StoredDetection, class_id_of

    rng = np.random.default_rng(seed)
    n_items, n_types, n_containers = int(rng.integers(3, 9)), int(rng.integers(2, 5)), int(rng.integers(1, 5))
    pool, textures = split_pools(heldout)
    types = choose_item_types(rng, n_items, min(n_types, n_items), pool)
    scene = generate_scene(rng, types, n_containers, n_distractors=1, textures=textures)
    constants = ArmConstants.reference(calibrated=True)
    width, height = 1640, 1232
    type_vectors = {t: rng.normal(0, 1, 32) for t in sorted(set(types))}
    frames, detections = [], []
    for pw in DEFAULT_PULSE_WIDTHS:
        boxes = frame_boxes(scene.objects, constants.camera, constants.theta_of_pw(pw), width, height)
        frames.append({"image_name": f"{pw}.jpg", "pw0": float(pw), "width_px": width, "height_px": height, "boxes": boxes})
        for b in boxes:
            if rng.random() < miss_rate:
                continue
            box = np.asarray(b["box_xyxy"], float)
            cut = (box <= 0.01) | (box >= [width - 0.01, height - 0.01, width - 0.01, height - 0.01])
            box = np.where(cut, box, box + rng.normal(0, box_noise_px, 4))
            box = np.clip(np.sort(box.reshape(2, 2), axis=0).reshape(4), 0, [width, height, width, height])
            embedding = None
            if b["class"] == "item":
                e = type_vectors[b["type"]] + rng.normal(0, 0.3, 32)
                embedding = (e / np.linalg.norm(e)).astype(np.float32)
            score = float(rng.uniform(0.8, 1.0))
            detections.append(StoredDetection(len(detections), f"{pw}.jpg", float(pw), width, height, box.astype(np.float32), score, class_id_of(b["class"]), embedding))
    for _ in range(n_false):
        pw = int(rng.choice(DEFAULT_PULSE_WIDTHS))
        x0, y0 = rng.uniform(0, width - 60), rng.uniform(0, height - 60)
        e = rng.normal(0, 1, 32)
        detections.append(StoredDetection(len(detections), f"{pw}.jpg", float(pw), width, height, np.array([x0, y0, x0 + 50, y0 + 50], np.float32), 0.55, ITEM_CLASS_ID, (e / np.linalg.norm(e)).astype(np.float32)))
    truth = {"arm_id": "ARM001", "session_id": f"sim_{seed}", "seed": seed, "objects": [o.to_json() for o in scene.objects], "frames": frames}
    return truth, ArmConstants.reference(calibrated=calibrated).to_mapping(), detections


def run_trigger_core(constants_mapping: Mapping, detections: list, random_state: int = 0) -> dict:
    """Geometry, dedup, grouping and planning of one session (the trigger without I/O).

    K-Means (scikit-learn, ``n_init=10``) groups the items into
    ``planner.choose_n_clusters(n_items, n_containers, embeddings)`` groups. A reduced
    trigger for the oracle benchmark: embeddings only (no shape weights, no calibrated
    group distance) and no view support (no frame list); the service's trigger is
    :meth:`sorterbot_cloud.service.Service.commands_for_session`.

    Returns
    -------
    dict
        The rich result (:func:`result_to_dict`).
    """

    from sorterbot_cloud import dedup, geometry, planner
    from sorterbot_cloud.camera import ArmConstants
    from sorterbot_cloud.structures import CONTAINER_CLASS_ID, ITEM_CLASS_ID

    constants = ArmConstants.from_mapping(constants_mapping)
    objects = dedup.merge(geometry.locate(detections, constants))
    items = [o for o in objects if o.class_id == ITEM_CLASS_ID]
    containers = [o for o in objects if o.class_id == CONTAINER_CLASS_ID]
    reason, commands, clusters = None, [], {}
    if not containers or not items:
        reason = "no container was detected" if not containers else "no item was detected"
    else:
        embeddings = np.stack([o.embedding for o in items])
        labels = planner.group_items(len(containers), embeddings, random_state=random_state)
        clusters = {o.object_id: int(label) for o, label in zip(items, labels, strict=True)}
        commands = planner.plan(items, containers, labels.astype(np.int64))
    mode = "calibrated" if constants.calibrated else "legacy"
    return result_to_dict(objects, commands, mode, reason, detections, clusters)


def oracle_benchmark(n_sessions: int = 20, first_seed: int = 1000) -> dict[str, float]:
    """Oracle-box benchmark (``sorterbot-cloud bench oracle``).

    Prints, per geometry mode, the aggregate scores of :func:`oracle_session` sessions
    and the median CPU time of :func:`run_trigger_core`, with the legacy / calibrated
    time ratio.

    Parameters
    ----------
    n_sessions : int
        Sessions per geometry mode, seeds ``first_seed`` .. ``first_seed + n_sessions - 1``.
    first_seed : int

    Returns
    -------
    dict
        Median trigger-core CPU time per mode, ms (``calibrated``, ``legacy``).
    """
    import time

    from sorterbot_cloud.errors import SorterBotError

    medians = {}
    for calibrated in (True, False):
        scores, times = [], []
        for seed in range(first_seed, first_seed + n_sessions):
            try:
                truth, constants, detections = oracle_session(seed, calibrated)
            except SorterBotError as exc:
                print(f"  seed {seed}: skipped ({exc.detail})")
                continue
            start = time.process_time()
            result = run_trigger_core(constants, detections)
            times.append(time.process_time() - start)
            score = score_session(truth, result)
            scores.append(score)
            if not (score.counts_exact and score.sorted_correctly):
                print(f"  seed {seed}: count error {score.count_error}, {score.problems[:2]}")
        mode = "calibrated" if calibrated else "legacy"
        medians[mode] = float(np.median(times)) * 1000
        agg = aggregate(scores).to_dict()
        print(f"{mode}: {json_line(agg)}, trigger core CPU median {medians[mode]:.1f} ms over {len(times)} sessions")
    print(f"calibrated / legacy trigger-core time ratio: {medians['calibrated'] / medians['legacy']:.2f}")
    return medians


def json_line(data: Mapping) -> str:
    """Compact one-line rendering of a flat mapping of numbers (3 decimals)."""
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in data.items())

