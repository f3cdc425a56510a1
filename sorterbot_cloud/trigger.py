"""The session trigger: stored detections in, pick-and-place commands out.

:class:`SessionTrigger` runs the stages that need the whole session (docs/design.rst,
Data flow): load the session's detections, place them in arm polar coordinates
(:mod:`~sorterbot_cloud.geometry`, legacy or calibrated camera), merge the detections of
one physical object (:mod:`~sorterbot_cloud.dedup`), group the items by kind
(:func:`~sorterbot_cloud.planner.group_items`) and plan the moves
(:func:`~sorterbot_cloud.planner.plan`). It only reads the database and the settings, so
any replica answers it. The records of its JSON answer are built here too
(:func:`object_record`, :func:`command_record`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import numpy as np

from sorterbot_cloud import dedup, geometry, planner
from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.ids import validate_id
from sorterbot_cloud.structures import (
    CLASS_NAMES,
    CONTAINER_CLASS_ID,
    ITEM_CLASS_ID,
    ArmObject,
    Command,
    StoredDetection,
)
from sorterbot_cloud.timing import StageTimer, observe_stages

logger = logging.getLogger(__name__)

#: Decimal places kept for millimetres, degrees and pulse widths in JSON answers.
ROUND_DIGITS = 2


class SessionTrigger:
    """Compute a session's commands from its stored detections.

    Parameters
    ----------
    settings : sorterbot_cloud.config.Settings
        Thresholds of dedup and grouping, the legacy camera, K-Means restarts and seed.
    repository : sorterbot_cloud.db.Repository
        ``load_session``, ``session_frames`` and ``save_commands``.
    embedder : object, optional
        Its ``group_distance`` attribute (the calibrated distance between kinds, from
        the weights' sidecar), when it has one, is the grouping distance on embeddings alone.
    """

    def __init__(self, settings, repository, embedder=None) -> None:
        self.settings = settings
        self.repository = repository
        self.embedder = embedder

    def run(self, arm_id: Any, session_id: Any, constants: Mapping[str, Any], *, n_groups: int | None = None) -> dict:
        """Compute, store and return the pick-and-place commands of a session.

        Steps (docs/design.rst, Data flow): load the session's detections, locate them in arm
        polar coordinates (legacy or calibrated camera), merge them into objects, cluster
        the items' embeddings into ``planner.choose_n_clusters(n_items, n_containers,
        embeddings)`` groups with K-Means (``planner.group_items``; at most one group per container), assign
        groups to containers and order the moves (planner), store the commands.

        Parameters
        ----------
        arm_id, session_id : str
        constants : mapping
            Trigger body: the original ``arm_config.yaml`` keys, optionally a ``camera`` block.
        n_groups : int, optional
            Diagnostics only (never set by the routes): group the items into this many
            groups (at most one per container) instead of the number the grouping
            chooses (:func:`planner.group_items`).

        Returns
        -------
        dict
            The rich result: ``arm_id``, ``session_id``, ``mode`` (``"calibrated"`` or
            ``"legacy"``), ``reason`` (why the command list is empty, else None),
            ``objects``, ``commands``, ``wire`` (the original client's
            ``[[[pick_pw0, pick_pw1], [place_pw0, place_pw1]], ...]``) and ``timings_ms``.

        Raises
        ------
        BadRequest
            On a malformed id.
        InvalidArmConstants
            On malformed constants.
        UnknownSession
            If no frame of the session is stored.
        """
        timer = StageTimer()
        arm_id = validate_id("arm_id", arm_id)
        session_id = validate_id("session_id", session_id)
        arm_constants = ArmConstants.from_mapping(constants)
        with timer.stage("load"):
            stored = list(self.repository.load_session(arm_id, session_id))
            frame_views = self.frame_views(arm_id, session_id)
        reference = None  # legacy mode: every detection placed once through the reference camera
        with timer.stage("geometry"):
            located = geometry.locate(stored, arm_constants)
            if not arm_constants.calibrated and self.settings.legacy_camera == "reference":
                nominal = reference_camera(arm_constants)
                reference = {d.detection.detection_id: d for d in geometry.locate(stored, nominal)}
        with timer.stage("dedup"):
            objects = self.merge(located, frame_views, arm_constants, legacy_placed=reference)
        items = [o for o in objects if o.class_id == ITEM_CLASS_ID]
        containers = [o for o in objects if o.class_id == CONTAINER_CLASS_ID]
        reason = None
        cluster_of_item: dict[int, int] = {}
        commands: list[Command] = []
        if not containers:
            reason = f"no container was detected in the session ({len(items)} items found): nothing to sort into"
        elif not items:
            reason = f"no item was detected in the session ({len(containers)} containers found): nothing to sort"
        else:
            with timer.stage("cluster"):
                if reference is not None:
                    items = with_nominal_shapes(items, stored, arm_constants, placed=reference)
                cluster_ids = self.group(items, len(containers), arm_constants.calibrated or self.settings.legacy_camera == "reference",
                                         n_groups=n_groups)
                cluster_of_item = {o.object_id: int(c) for o, c in zip(items, cluster_ids, strict=True)}
            with timer.stage("plan"):
                commands = list(planner.plan(items, containers, cluster_ids))
        by_id = {d.detection_id: d for d in stored}
        if reason:
            logger.warning(
                "session has nothing to sort: %s", reason,
                extra={"arm_id": arm_id, "session_id": session_id, "log_type": "get_commands_of_session"},
            )
        result = {
            "arm_id": arm_id,
            "session_id": session_id,
            "mode": "calibrated" if arm_constants.calibrated else "legacy",
            "reason": reason,
            "objects": [object_record(o, cluster_of_item.get(o.object_id), by_id) for o in objects],
            "commands": [command_record(c) for c in commands],
            "wire": [c.to_wire() for c in commands],
        }
        # the stored copy carries the timings up to the store; the answer adds the store's
        result["timings_ms"] = timer.finish()
        with timer.stage("store"):
            self.repository.save_commands(arm_id, session_id, arm_constants.to_mapping(), result)
        result = dict(result, timings_ms=timer.finish())
        observe_stages(result["timings_ms"], {"total": "trigger"})
        logger.info(
            "session commands computed",
            extra={
                "arm_id": arm_id,
                "session_id": session_id,
                "log_type": "get_commands_of_session",
                "n_commands": len(commands),
                "timings_ms": result["timings_ms"],
            },
        )
        return result

    def frame_views(self, arm_id: str, session_id: str) -> list:
        """Every stored frame of a session, with or without detections (the trigger's view support).

        Returns
        -------
        list of dedup.FrameView
        """
        return [
            dedup.FrameView(f["image_name"], float(f["pw0"]), int(f["width_px"]), int(f["height_px"]))
            for f in self.repository.session_frames(arm_id, session_id)
        ]

    def merge(self, located: list, frame_views: list, arm_constants: ArmConstants,
              legacy_placed: Mapping[int, Any] | None = None) -> list[ArmObject]:
        """The trigger's dedup stage: :func:`dedup.merge` with the settings' thresholds.

        Parameters
        ----------
        located : list of LocatedDetection
            The session's detections, from :func:`geometry.locate <sorterbot_cloud.geometry.placement.locate>`.
        frame_views : list of dedup.FrameView
            Every frame of the session.
        arm_constants : ArmConstants
        legacy_placed : mapping of int to LocatedDetection, optional
            Legacy mode: the detections placed through the reference camera, by
            ``detection_id`` (:func:`dedup.merge`); placed there when not given.

        Returns
        -------
        list of ArmObject
            Items first, then containers (:func:`dedup.merge`).
        """
        return list(
            dedup.merge(
                located,
                distance_factor=self.settings.dedup_distance_factor,
                constants=arm_constants,
                frames=frame_views,
                min_view_support={
                    ITEM_CLASS_ID: self.settings.dedup_min_view_support_item,
                    CONTAINER_CLASS_ID: self.settings.dedup_min_view_support_container,
                },
                legacy_camera=reference_camera(arm_constants) if self.settings.legacy_camera == "reference" else None,
                legacy_placed=legacy_placed,
            )
        )

    def kinds_distance(self, shapes_appended: bool) -> float | None:
        """The distance above which two groups of items are different kinds (:meth:`group`).

        With the items' shapes (or colours) appended, ``Settings.grouping_distance`` (the
        extra terms lengthen the distances between kinds, so it is tuned with them) unless it is None;
        otherwise the embedder's ``group_distance``, calibrated on crops alone; None when
        neither is set (the planner then takes the largest gap).
        """
        if shapes_appended and self.settings.grouping_distance is not None:
            return self.settings.grouping_distance
        return getattr(self.embedder, "group_distance", None)

    def group(self, items: list[ArmObject], n_containers: int, metric_shapes: bool, *, size_weight: float | None = None,
              height_weight: float | None = None, group_distance: float | None = None,
              n_groups: int | None = None, colour_weight: float | None = None) -> np.ndarray:
        """Group labels of a session's items (the trigger's clustering stage).

        The items' embeddings, with their fitted size and height where they are metric
        appended (:func:`planner.item_features`, weights ``Settings.grouping_size_weight``
        and ``grouping_height_weight``) and their colour where every item has one
        (``Settings.grouping_colour_weight``), are grouped by :func:`planner.group_items`: as
        many groups as the grouping distance finds kinds (``Settings.grouping_distance``
        where shapes or colours are appended, else the embedder's calibrated ``group_distance``; with
        neither, the largest gap), at most one per container, so a kind is never split.

        Parameters
        ----------
        items : list of ArmObject
            The session's items (each with an ``embedding``).
        n_containers : int
        metric_shapes : bool
            Whether the items' ``size_mm`` and ``height_mm`` are millimetres (calibrated
            mode, or legacy items measured by :func:`with_nominal_shapes`).
        size_weight, height_weight, group_distance, colour_weight : float, optional
            Override the settings' weights and the distance (for tuning,
            ``sorterbot-cloud tune-grouping``).
        n_groups : int, optional
            Diagnostics: this many groups instead of the chosen number (:func:`planner.group_items`).

        Returns
        -------
        cluster_ids : ndarray of shape (len(items),), int64
        """
        features = item_embedding_matrix(items)
        size_weight = self.settings.grouping_size_weight if size_weight is None else size_weight
        height_weight = self.settings.grouping_height_weight if height_weight is None else height_weight
        colour_weight = self.settings.grouping_colour_weight if colour_weight is None else colour_weight
        shapes_appended = metric_shapes and (size_weight > 0 or height_weight > 0)
        colours_appended = colour_weight > 0 and all(o.colour_lab is not None for o in items)
        if colour_weight > 0 and not colours_appended:
            logger.warning("items without a stored colour: grouped without colour (run `sorterbot-cloud db reembed`)")
        if shapes_appended or colours_appended:
            features = planner.item_features(
                features,
                np.array([o.size_mm for o in items]) if shapes_appended else None,
                np.array([o.height_mm or 0.0 for o in items]) if shapes_appended else None,
                size_weight if shapes_appended else 0.0,
                height_weight if shapes_appended else 0.0,
                np.array([o.colour_lab for o in items], dtype=np.float64) if colours_appended else None,
                colour_weight if colours_appended else 0.0,
            )
        distance = self.kinds_distance(shapes_appended or colours_appended)
        return planner.group_items(
            n_containers, features, random_state=self.settings.random_state, n_init=self.settings.kmeans_n_init,
            group_distance=distance if group_distance is None else group_distance, n_groups=n_groups,
        )


def reference_camera(arm_constants: ArmConstants) -> ArmConstants:
    """The reference arm's calibrated constants with this arm's rotation range (legacy mode's assumed camera)."""
    return dataclasses.replace(
        ArmConstants.reference(), rotation_range_as_deg=arm_constants.rotation_range_as_deg,
        rotation_range_as_pw=arm_constants.rotation_range_as_pw,
    )


def with_nominal_shapes(items: list[ArmObject], stored: list[StoredDetection], arm_constants: ArmConstants,
                         placed: Mapping[int, Any] | None = None) -> list[ArmObject]:
    """Legacy mode: the items with a size and height measured through the reference camera.

    Legacy constants carry no camera, so their sizes are box sides in pixels, which
    shrink with distance and say nothing of height. For grouping only (positions and
    pulse widths stay those of the legacy formulas), each item's boxes are fitted again
    with the reference arm's camera (:meth:`CameraModel.reference`, docs/design.rst: the
    Raspberry Pi camera v2 and the simulator's mounting) and the arm's own rotation
    range: :func:`geometry.locate <sorterbot_cloud.geometry.placement.locate>` and :func:`geometry.refine_objects <sorterbot_cloud.geometry.refine.refine_objects>` as in calibrated
    mode. On an arm mounted differently every size is off, but by similar factors for
    items at similar distances, and grouping compares the items of one session; the
    evaluation's sessions use the reference camera, so this is not measured there.

    Parameters
    ----------
    items : list of ArmObject
    stored : list of StoredDetection
        The session's detections.
    arm_constants : ArmConstants
        The session's (legacy) constants.
    placed : mapping of int to LocatedDetection, optional
        ``stored`` already placed through the reference camera
        (:func:`geometry.locate <sorterbot_cloud.geometry.placement.locate>` with :func:`reference_camera`), by ``detection_id``;
        placed here when not given.

    Returns
    -------
    list of ArmObject
        Copies of ``items`` with ``size_mm`` and ``height_mm`` replaced, same order.
    """
    nominal = reference_camera(arm_constants)
    if placed is None:  # one batched single-frame fit for all items
        by_id = {d.detection_id: d for d in stored}
        groups = geometry.locate_groups([[by_id[i] for i in obj.detection_ids if i in by_id] for obj in items], nominal)
    else:
        groups = [[placed[i] for i in obj.detection_ids if i in placed] for obj in items]
    shapes = geometry.refine_objects(groups, nominal)
    out = []
    for obj, dets, shape in zip(items, groups, shapes, strict=True):
        if not dets:
            out.append(obj)
            continue
        measured = dedup.merge_group(dets, nominal, shape)
        out.append(dataclasses.replace(obj, size_mm=measured.size_mm, height_mm=measured.height_mm))
    return out


def item_embedding_matrix(items: list[ArmObject]) -> np.ndarray:
    """Stack the items' embeddings into an (N, D) float32 matrix.

    An item without an embedding (not expected: every item detection is embedded at
    ingest) gets a zero row, so clustering still runs and stays deterministic.
    """
    dims = {int(np.size(o.embedding)) for o in items if o.embedding is not None}
    dim = max(dims) if dims else 1
    rows = []
    for o in items:
        if o.embedding is None or np.size(o.embedding) != dim:
            rows.append(np.zeros(dim, np.float32))
        else:
            rows.append(np.asarray(o.embedding, np.float32).reshape(-1))
    return np.stack(rows).astype(np.float32)


def _round(value: float) -> float:
    return round(float(value), ROUND_DIGITS)


def object_record(obj: ArmObject, cluster_id: int | None, by_id: Mapping[int, StoredDetection]) -> dict:
    """JSON record of one object of the trigger's answer: class, position (``x_mm``, ``y_mm``,
    ``r_mm``, ``theta_deg``, pulse widths ``pw0``/``pw1``), ``size_mm``, score, group and the
    detections it merges (boxes in XYXY pixels of their frames)."""
    detections = []
    for detection_id in obj.detection_ids:
        d = by_id.get(detection_id)
        if d is None:
            continue
        detections.append(
            {
                "detection_id": int(d.detection_id),
                "image_name": d.image_name,
                "box_xyxy": [round(float(v), 2) for v in np.asarray(d.box_xyxy).reshape(-1)],
                "score": round(float(d.score), 4),
            }
        )
    return {
        "object_id": int(obj.object_id),
        "class": CLASS_NAMES[int(obj.class_id)],
        "x_mm": _round(obj.x_mm),
        "y_mm": _round(obj.y_mm),
        "r_mm": _round(obj.position.r_mm),
        "theta_deg": _round(obj.position.theta_deg),
        "pw0": _round(obj.position.pw0),
        "pw1": _round(obj.position.pw1),
        "size_mm": _round(obj.size_mm),
        "score": round(float(obj.score), 4),
        "cluster_id": None if cluster_id is None else int(cluster_id),
        "detections": detections,
    }


def position_record(obj: ArmObject) -> dict:
    """Where a command picks or places: ``object_id``, pulse widths ``pw0``/``pw1``, ``r_mm``, ``theta_deg``."""
    return {
        "object_id": int(obj.object_id),
        "pw0": _round(obj.position.pw0),
        "pw1": _round(obj.position.pw1),
        "r_mm": _round(obj.position.r_mm),
        "theta_deg": _round(obj.position.theta_deg),
    }


def command_record(command: Command) -> dict:
    """JSON record of one pick-and-place command: ``pick``, ``place`` (:func:`position_record`) and ``cluster_id``."""
    return {
        "pick": position_record(command.item),
        "place": position_record(command.container),
        "cluster_id": int(command.cluster_id),
    }


__all__ = ["SessionTrigger", "command_record", "object_record", "position_record", "reference_camera",
           "with_nominal_shapes"]
