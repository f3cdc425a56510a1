"""Multi-frame refinement (calibrated mode): one 3D shape per object from all its boxes.

After deduplication, :func:`refine_objects` fits one 3D shape (cuboid with yaw, rounded
bowl -- a solid of revolution whose wall is a quarter ellipse, a cylinder when its radii
agree -- or sphere; :data:`REFINE_MODELS`) to *all* boxes of an object across frames. The
arm's rotation moves the camera on a circle and the object across the image, and only
the true height and depth project to every box, so this resolves the single-box
ambiguity (:mod:`~sorterbot_cloud.geometry.calibrated`): on the simulator catalogue the
position error drops from p95 ~25 mm (single-frame averages) to ~5 mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.geometry.calibrated import FIT_PRIORS
from sorterbot_cloud.geometry.located import LocatedDetection, truncation
from sorterbot_cloud.geometry.shapes import bowl_boxes, cuboid_boxes, frame_terms, revolved_boxes, sphere_boxes
from sorterbot_cloud.geometry.solver import batched_lm
from sorterbot_cloud.structures import CONTAINER_CLASS_ID, ITEM_CLASS_ID

#: Box noise assumed by the multi-frame refinement (pixels, one sigma). The shipped
#: detector's sides scatter by 6-12 px on containers and 2-5 px on items (1640x1232
#: frames); 2 px (the simulator's boxes) let its container boxes pull fits far off their
#: priors. Chosen on 160 tuning sessions replayed offline (seeds 3000.. and 9000.., detector
#: boxes with one refinement step, calibrated mode): position p95 averaged over the four
#: sets of 40 was 20.2 mm at 2 px, 17.6 at 4, 17.2 at 5, 17.5 at 6 (with REFINE_SCHEDULE
#: (10, 6)); 4 px keeps noise-free shapes closest (frustum centres 0.5 mm off, 1.2 at 5 px).
REFINE_SIGMA_PX = 4.0
#: Box noise of the multi-frame refinement per class id where it differs from
#: :data:`REFINE_SIGMA_PX` (pixels, one sigma). The shipped detector's container sides are
#: off by 3-9 px (median absolute error per side and container type, 160 tuning sessions),
#: items' by 1-3 px; at 4 px the container boxes outweighed the height prior and some open
#: boxes were fitted flat (height 0-10 mm) and 25-40 mm too far. With the rounded-bowl
#: model, container sigmas 4 / 6 / 8 / 10 px gave pooled position p95 13.55 / 13.47 / 13.27
#: / 13.98 mm on those sessions (the trigger replayed on their stored detections; 7 bowl
#: rings and no part-box join then; with the shipped settings 13.50 mm).
REFINE_SIGMA_PX_BY_CLASS: dict[int, float] = {CONTAINER_CLASS_ID: 8.0}
#: Residuals beyond this many sigmas are down-weighted (Huber, by IRLS).
REFINE_HUBER_SIGMAS = 2.0
#: Levenberg-Marquardt iterations of each IRLS sweep of the multi-frame refinement.
#: Measured by ``sorterbot-cloud bench oracle --n 40 --seed-start 500`` (oracle boxes, 39 sessions):
#: (10, 6, 5) gave position p95 6.72 mm at 73.5 ms trigger core, (8, 4) 6.77 mm at 58.6 ms;
#: on rendered sessions with the simulator's boxes (``sorterbot-cloud evaluate-sessions
#: --detector ground-truth``, 20 held-out sessions) p95 5.7 mm -> 7.9 mm ((10, 4): 6.9 mm),
#: the price of a full trigger route under 100 ms (``bench trigger``: 123 -> 98 ms).
#: (6, 4) was faster still but left noise-free frustums 4 mm off (tests/unit/test_geometry.py).
#: With REFINE_SIGMA_PX 4 (smaller residuals in sigmas, slower to converge) (8, 4) left them
#: 3.3 mm off, (10, 6) 0.5 mm.
REFINE_SCHEDULE = (10, 6)
#: Resting-pose prior of items (log-sigma): an item at rest on a table lies on a wide face,
#: so a fit taller than its footprint is penalised by ``max(0, log(height / size)) /
#: REST_LOG_SIGMA`` (a sigma per 35 % too tall; a cork standing on end, 30 mm high on a
#: 25 mm footprint, costs 0.6 sigma). A long item pointing at the camera gives boxes that a
#: thin column explains as well; the column's small size then splits its kind. On 160
#: tuning sessions replayed offline it fixed one such split (a battery fitted 16 mm wide and
#: 39 mm tall, 52 x 10 mm with the prior) and changed no other outcome (0.15..0.3 alike).
REST_LOG_SIGMA = 0.3
#: Per-parameter penalty (in squared sigmas) when choosing between shape models.
REFINE_PARAM_PENALTY = 2.0
#: A fit whose robust cost per box side used exceeds this (squared sigmas) is rejected:
#: no model explains the boxes. On oracle sessions good fits stay below 3, failed ones
#: above 10. The detector's container boxes are noisier (side errors of 10-20 px): with
#: the old bar of 4, 95 of 97 containers of 40 rendered sessions fell back to single-frame
#: averages; with 10, fits with cost 4..10 per side are kept (median container error
#: 14.5 -> 12.8 mm, calibrated p95 over all objects 28.6 -> 26.1 mm), and the simulator's
#: boxes give the same figures as with 4 (evaluate-sessions --detector ground-truth).
#: Those figures were at REFINE_SIGMA_PX 2; at 4 px the bar stays 10 squared sigmas (on
#: 40 + 40 tuning sessions replayed with an earlier detector's boxes, p95 18.1 / 20.6 mm at 5,
#: 17.1 / 17.1 at 10, 17.1 / 18.7 at 20).
REFINE_MAX_MEAN_COST = 10.0
#: Starting yaws (degrees) of the cuboid model (a rectangle repeats every 90 degrees
#: once its sides may swap).
_CUBOID_START_YAWS_DEG = (0.0, 45.0)
#: Levenberg-Marquardt iterations after which only the best of a model's starting points
#: (:data:`_CUBOID_START_YAWS_DEG`) goes on; the first sweep of :data:`REFINE_SCHEDULE`
#: then continues from it alone (10 would run every start through the whole first
#: sweep). On the 160 tuning sessions (seeds 3000.. and 9000.., the trigger replayed on
#: their stored detections, both modes) 4 changed no session's counts or sorting, left
#: pooled position p95 at 13.74 mm and moved 11 of 1295 objects by more than 0.5 mm
#: (one container 9.6 mm); 3 gave p95 13.87 mm. It saves about 5 ms of the 20-frame
#: trigger (``sorterbot-cloud bench trigger``).
REFINE_START_ITERATIONS = 4
#: The shape models that compete in the multi-frame fit (:func:`refine_objects`): any of
#: ``cuboid``, ``bowl``, ``sphere`` and ``revolved``. The three-ring solid of revolution
#: (``revolved``) is left out: its free middle ring fits the detector's box noise, and it
#: cannot follow a rounded wall between its rings (on the simulator's boxes, bowls came out
#: 9.6 mm too far and too low, median; 1.1 mm with the rounded-bowl model, which is also a
#: cylinder when its radii agree). On 160 tuning sessions (the trigger replayed on their
#: stored detections) pooled position p95 was 16.11 mm with (cuboid, revolved, sphere),
#: 14.93 with the bowl model added and 13.55 with it in place of ``revolved`` (container
#: box sigma 4 px, 7 bowl rings).
REFINE_MODELS: tuple[str, ...] = ("cuboid", "bowl", "sphere")


@dataclass(frozen=True)
class ObjectShape:
    """The shape fitted to all boxes of one object (multi-frame refinement).

    Parameters
    ----------
    x_mm, y_mm : float
        Footprint centre on the table.
    size_mm : float
        Largest horizontal extent of the fitted shape (footprint diameter).
    height_mm : float
    model : {'cuboid', 'bowl', 'sphere', 'revolved'}
    cost : float
        Robust sum of squared box residuals, in squared box sigmas (:data:`REFINE_SIGMA_PX`, :data:`REFINE_SIGMA_PX_BY_CLASS`).
    """

    x_mm: float
    y_mm: float
    size_mm: float
    height_mm: float
    model: str
    cost: float


def rest_residual(size_mm: np.ndarray, height_mm: np.ndarray) -> np.ndarray:
    """Residual (in sigmas) of the resting-pose prior: ``max(0, log(height / size)) / REST_LOG_SIGMA``.

    Parameters
    ----------
    size_mm, height_mm : ndarray of shape (N,), float
        Footprint diameter and height of fitted shapes (mm).

    Returns
    -------
    ndarray of shape (N,), float64
        0 where the shape is no taller than wide, or where :data:`REST_LOG_SIGMA` is 0 (off).
    """
    size_mm, height_mm = np.asarray(size_mm, np.float64), np.asarray(height_mm, np.float64)
    if REST_LOG_SIGMA <= 0:
        return np.zeros(np.broadcast(size_mm, height_mm).shape)
    tall = np.log(np.maximum(height_mm, 1e-3) / np.maximum(size_mm, 1e-3))
    return np.maximum(tall, 0.0) / REST_LOG_SIGMA


def refine_objects(groups: list[list[LocatedDetection]], constants: ArmConstants) -> list[ObjectShape | None]:
    """Fit one 3D shape per object to all its boxes across frames (calibrated mode).

    A single box cannot tell an object's height from its depth
    (:mod:`~sorterbot_cloud.geometry.calibrated`), but the boxes of one object on several
    frames can: the arm's rotation moves the camera on a circle around the base and the
    object across the image, and only the true shape projects to all the boxes. The shape
    models of :data:`REFINE_MODELS` are fitted to every object's boxes jointly (batched
    Levenberg-Marquardt, Huber-weighted by IRLS, sides cut by the image border left out,
    box noise :data:`REFINE_SIGMA_PX` or the class's :data:`REFINE_SIGMA_PX_BY_CLASS`): by
    default an upright cuboid with yaw (boxes, trays, dice), a rounded bowl
    (:func:`~sorterbot_cloud.geometry.shapes.bowl_boxes`: bowls, and tins, coins and caps
    as cylinders) and a sphere resting on the table; optionally a solid of revolution with
    a piecewise-linear profile through three rings (``revolved``). The model with the
    least cost plus :data:`REFINE_PARAM_PENALTY` per parameter wins. Starting points come
    from the single-frame fits (:func:`~sorterbot_cloud.geometry.calibrated.fit_prisms`).
    Weak priors join the box residuals: size and height
    (:data:`~sorterbot_cloud.geometry.calibrated.FIT_PRIORS`) and, for items, the resting
    pose (:func:`rest_residual`).

    Parameters
    ----------
    groups : list of list of LocatedDetection
        The detections of each object (one class per group, one detection per frame).
    constants : ArmConstants
        Calibrated constants (``camera`` set).

    Returns
    -------
    list of ObjectShape or None
        One per group; None where the group has fewer than 12 box sides not cut by the
        border (2 per parameter), where the best fit's cost per side exceeds
        :data:`REFINE_MAX_MEAN_COST` (no model explains the boxes), or in legacy mode.

    Raises
    ------
    ValueError
        If :data:`REFINE_MODELS` names no known model.
    """
    camera = constants.camera
    out: list[ObjectShape | None] = [None] * len(groups)
    if camera is None:
        return out
    usable = []
    for g, dets in enumerate(groups):
        boxes = np.array([np.asarray(d.detection.box_xyxy, float).reshape(4) for d in dets])
        sizes = np.array([(d.detection.width_px, d.detection.height_px) for d in dets], float)
        if (~truncation(boxes, sizes)).sum() >= 12:
            usable.append(g)
    if not usable:
        return out
    f_max = max(len(groups[g]) for g in usable)
    b = len(usable)
    boxes = np.zeros((b, f_max, 4))
    sizes = np.ones((b, f_max, 2)) * [camera.calib_width, camera.calib_height]
    thetas = np.zeros((b, f_max))
    mask = np.zeros((b, f_max, 4))
    start = np.zeros((b, 4))  # x, y, width, height from the single-frame fits
    class_ids = np.zeros(b, int)
    for k, g in enumerate(usable):
        dets = groups[g]
        n = len(dets)
        boxes[k, :n] = [np.asarray(d.detection.box_xyxy, float).reshape(4) for d in dets]
        sizes[k, :n] = [(d.detection.width_px, d.detection.height_px) for d in dets]
        thetas[k, :n] = [constants.theta_of_pw(float(d.detection.frame_pw0)) for d in dets]
        mask[k, :n] = ~truncation(boxes[k, :n], sizes[k, :n])
        w = np.array([max(d.weight, 1e-6) for d in dets])
        whole = [d for d in dets if not d.truncated] or dets
        start[k] = (
            np.average([d.x_mm for d in dets], weights=w),
            np.average([d.y_mm for d in dets], weights=w),
            float(np.median([d.size_mm for d in whole])),
            float(np.median([d.height_mm for d in whole])),
        )
        class_ids[k] = dets[0].class_id
    h_max = camera.height_mm * 0.8

    priors = np.array([FIT_PRIORS[int(c)] for c in class_ids])  # (b, 5)

    sigma_px = np.array([REFINE_SIGMA_PX_BY_CLASS.get(int(c), REFINE_SIGMA_PX) for c in class_ids], float)  # (b,)

    def make_residuals(boxes_fn, size_of, height_of, rep: int):
        """Residuals of ``rep`` starts per object; boxes are computed only on the frames
        with a side to fit (the padding of shorter objects and wholly cut boxes skipped)."""
        bx = np.repeat(boxes, rep, axis=0)  # (B, F, 4)
        mk = np.repeat(mask, rep, axis=0)
        pr = np.repeat(priors, rep, axis=0)
        is_item = np.repeat(class_ids == ITEM_CLASS_ID, rep)
        n_obj, n_frames = bx.shape[:2]
        rows = np.flatnonzero(mk.any(axis=2))  # flat (object, frame) indices with a side to fit
        rows_obj = rows // n_frames
        row_terms = frame_terms(
            np.repeat(thetas, rep, axis=0).reshape(-1)[rows][:, None], np.repeat(sizes, rep, axis=0).reshape(-1, 2)[rows][:, None], camera
        )
        target = bx.reshape(-1, 4)[rows]
        row_sigma = np.repeat(sigma_px, rep)[rows_obj][:, None]  # (R, 1)
        row_mask = mk.reshape(-1, 4)[rows] / row_sigma
        weights = np.ones_like(row_mask)
        tiled: dict[int, tuple] = {}

        def tiles(k):
            """Row terms, indices and priors of ``k`` stacked copies of the batch (built once per ``k``)."""
            if k not in tiled:
                offsets = np.arange(k)[:, None]
                tiled[k] = (row_terms.tiled(k), (rows_obj[None] + offsets * n_obj).reshape(-1),
                            (rows[None] + offsets * (n_obj * n_frames)).reshape(-1),
                            np.concatenate([pr] * k, axis=0), np.concatenate([is_item] * k))
            return tiled[k]

        def row_boxes(p, k):
            terms_k, obj_k = tiles(k)[:2]
            return boxes_fn(p[obj_k], terms_k)[:, 0]  # (k R, 4)

        def residual_fn(p):
            k = len(p) // n_obj
            _, _, scatter_k, prk, is_item_k = tiles(k)
            r_rows = (row_boxes(p, k).reshape(k, *target.shape) - target) * (row_mask * np.sqrt(weights))
            full = np.zeros((k * n_obj * n_frames, 4))
            full[scatter_k] = r_rows.reshape(-1, 4)
            size, height = size_of(p), height_of(p)
            r_size = np.log(np.maximum(size, 1.0) / prk[:, 0]) / prk[:, 1]
            r_height = (height - prk[:, 2]) / prk[:, 3]
            r_rest = np.where(is_item_k, rest_residual(size, height), 0.0)
            return np.concatenate([full.reshape(len(p), -1), r_size[:, None], r_height[:, None], r_rest[:, None]], axis=1)

        def reweight(p):
            r = np.abs(row_boxes(p, 1) - target) / row_sigma
            weights[:] = np.minimum(1.0, REFINE_HUBER_SIGMAS / np.maximum(r, 1e-9))

        return residual_fn, reweight

    def run(boxes_fn, size_of, height_of, p0, steps, clamp, rep):
        """IRLS sweeps of LM; with ``rep`` starts per object, the best start after
        :data:`REFINE_START_ITERATIONS` goes on alone."""
        residual_fn, reweight = make_residuals(boxes_fn, size_of, height_of, rep)
        first = min(REFINE_START_ITERATIONS, REFINE_SCHEDULE[0]) if rep > 1 else REFINE_SCHEDULE[0]
        p, cost = batched_lm(residual_fn, p0, steps, clamp, first)
        if rep > 1:
            best = np.argmin(cost.reshape(b, rep), axis=1)
            p = p.reshape(b, rep, -1)[np.arange(b), best]
            residual_fn, reweight = make_residuals(boxes_fn, size_of, height_of, 1)
            if REFINE_SCHEDULE[0] > first:  # the first sweep goes on from the best start alone
                p, cost = batched_lm(residual_fn, p, steps, clamp, REFINE_SCHEDULE[0] - first)
        for iterations in REFINE_SCHEDULE[1:]:
            reweight(p)
            p, cost = batched_lm(residual_fn, p, steps, clamp, iterations)
        return p, cost

    def clamp_cuboid(p):
        p[:, 2] = np.maximum(np.abs(p[:, 2]), 1.0)
        p[:, 3] = np.maximum(np.abs(p[:, 3]), 1.0)
        p[:, 5] = np.clip(p[:, 5], 0.5, h_max)
        return p

    def clamp_rev(p):
        p[:, 2:5] = np.maximum(np.abs(p[:, 2:5]), 0.5)
        p[:, 5] = np.clip(p[:, 5], 0.5, h_max)
        return p

    def clamp_bowl(p):
        p[:, 2:4] = np.maximum(np.abs(p[:, 2:4]), 0.5)
        p[:, 4] = np.clip(p[:, 4], 0.5, h_max)
        return p

    def clamp_sphere(p):
        p[:, 2] = np.clip(np.abs(p[:, 2]), 0.5, h_max / 2)
        return p

    n_yaw = len(_CUBOID_START_YAWS_DEG)
    a0 = np.maximum(start[:, 2], 2.0)
    h0 = np.clip(start[:, 3], 1.0, h_max)

    def cuboid_start():
        per_yaw = [np.stack([start[:, 0], start[:, 1], 0.8 * a0, 0.6 * a0, np.full(b, math.radians(y)), h0], axis=1) for y in _CUBOID_START_YAWS_DEG]
        return np.stack(per_yaw, axis=1).reshape(b * n_yaw, 6)

    # model -> (starting points, boxes, size, height, LM steps, clamp, starts per object)
    specs = {
        "cuboid": (cuboid_start, cuboid_boxes, lambda p: np.hypot(p[:, 2], p[:, 3]), lambda p: p[:, 5],
                   np.array([0.2, 0.2, 0.2, 0.2, 0.005, 0.2]), clamp_cuboid, n_yaw),
        "revolved": (lambda: np.stack([start[:, 0], start[:, 1], a0 / 2, a0 / 2, a0 / 2, h0], axis=1), revolved_boxes,
                     lambda p: 2 * np.abs(p[:, 2:5]).max(1), lambda p: p[:, 5], np.full(6, 0.2), clamp_rev, 1),
        "sphere": (lambda: np.stack([start[:, 0], start[:, 1], a0 / 2], axis=1), sphere_boxes,
                   lambda p: 2 * np.abs(p[:, 2]), lambda p: 2 * np.abs(p[:, 2]), np.full(3, 0.2), clamp_sphere, 1),
        "bowl": (lambda: np.stack([start[:, 0], start[:, 1], a0 / 4, a0 / 2, h0], axis=1), bowl_boxes,
                 lambda p: 2 * np.abs(p[:, 2:4]).max(1), lambda p: p[:, 4], np.full(5, 0.2), clamp_bowl, 1),
    }
    models = [m for m in specs if m in REFINE_MODELS]
    if not models:
        raise ValueError(f"REFINE_MODELS names no known shape model: {REFINE_MODELS!r} (known: {sorted(specs)})")
    fits = {}
    for m in models:
        start_fn, boxes_fn, size_of, height_of, steps, clamp, rep = specs[m]
        params, cost = run(boxes_fn, size_of, height_of, start_fn(), steps, clamp, rep)
        fits[m] = (params, cost, size_of(params), height_of(params))
    scores = np.stack([fits[m][1] + fits[m][0].shape[1] * REFINE_PARAM_PENALTY for m in models], axis=1)
    choice = np.argmin(scores, axis=1)
    for k, g in enumerate(usable):
        m = models[choice[k]]
        params, cost, size, height = fits[m]
        shape = ObjectShape(float(params[k, 0]), float(params[k, 1]), float(size[k]), float(height[k]), m, float(cost[k]))
        mean_cost = shape.cost / max(mask[k].sum(), 1.0)
        if all(math.isfinite(v) for v in (shape.x_mm, shape.y_mm, shape.size_mm)) and mean_cost <= REFINE_MAX_MEAN_COST:
            out[g] = shape
    return out
