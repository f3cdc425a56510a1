"""Orchestration of the two requests an arm makes: ingest a frame, trigger a session.

:class:`Service` wires the stages together (docs/design.rst, Data flow) and knows nothing
about HTTP: it takes plain values, raises the project's errors
(:mod:`sorterbot_cloud.errors`) and returns JSON-ready dicts. The Flask layer in
:mod:`sorterbot_cloud.api` and the command line both drive it.

Ingest (``process_frame``) does all the per-frame work (decode, detect, crop, embed,
measure item colours) while the arm is still moving, stores the frame, its detections,
item embeddings and colours in
one transaction and archives the original bytes. The trigger
(``commands_for_session``) only reads the database and runs geometry, deduplication,
clustering and planning, so any replica answers it in milliseconds.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import numpy as np

from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.errors import BadRequest, InvalidImage, ServiceUnavailable, SorterBotError
from sorterbot_cloud.imaging import MAX_ASPECT_RATIO, decode_image
from sorterbot_cloud.storage import DiskArchive
from sorterbot_cloud.structures import (
    CLASS_NAMES,
    CONTAINER_CLASS_ID,
    ID_PATTERN,
    IMAGE_NAME_PATTERN,
    ITEM_CLASS_ID,
    ArmObject,
    Command,
    Detections,
    Frame,
    StoredDetection,
)

logger = logging.getLogger(__name__)

#: Decimal places kept for millimetres, degrees and pulse widths in JSON answers.
ROUND_DIGITS = 2


def validate_id(name: str, value: Any) -> str:
    """Check an arm or session id against :data:`~sorterbot_cloud.structures.ID_PATTERN`.

    Parameters
    ----------
    name : str
        ``"arm_id"`` or ``"session_id"``, for the message.
    value : object
        The value received (an int from a JSON body is accepted and turned into a string).

    Returns
    -------
    str

    Raises
    ------
    BadRequest
        If the value is missing or is not 1 to 64 of ``[A-Za-z0-9_.-]``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or value == "":
        raise BadRequest(f"missing parameter {name!r}")
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise BadRequest(f"{name} must be 1 to 64 characters of letters, digits, '_', '-' and '.', got {value!r}")
    return value


def check_body_arm_id(arm_id: str, constants: ArmConstants) -> None:
    """Refuse a trigger whose body names another arm than its query or URL.

    Parameters
    ----------
    arm_id : str
        The arm of the request (query or URL), already validated.
    constants : ArmConstants
        The body's constants; their ``arm_id`` may be None (not given).

    Raises
    ------
    BadRequest
        If the body's ``arm_id`` is given and differs from ``arm_id``.
    """
    if constants.arm_id is not None and constants.arm_id != arm_id:
        raise BadRequest(
            f"the body's arm_id {constants.arm_id!r} is not the arm of the request ({arm_id!r}): "
            "send one arm_id, or the same in both"
        )


def validate_image_name(image_name: Any) -> str:
    """Check a frame name such as ``1200.jpg`` (no directories, so no path traversal).

    Raises
    ------
    BadRequest
        If the name is missing or is not ``<pulse width>.jpg|jpeg|png``.
    """
    if image_name is None or image_name == "":
        raise BadRequest("missing parameter 'image_name'")
    if not isinstance(image_name, str) or not IMAGE_NAME_PATTERN.fullmatch(image_name):
        raise BadRequest(
            f"image_name must be '<base servo pulse width>.jpg' (or .jpeg/.png), e.g. '1200.jpg', got {image_name!r}"
        )
    return image_name


class _Timer:
    """Collects per-stage wall-clock durations in milliseconds."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3

    def finish(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.ms.items()}
        out["total"] = round((time.perf_counter() - self._start) * 1e3, 3)
        return out


def _observe_stages(timings_ms: Mapping[str, float], stages: Mapping[str, str]) -> None:
    """Record stage durations in the Prometheus histograms of :mod:`sorterbot_cloud.ops.metrics`.

    ``stages`` maps a key of ``timings_ms`` to the metric's stage name. Does nothing when
    the ops package is not installed.
    """
    try:
        from sorterbot_cloud.ops.metrics import observe_stage
    except ImportError:
        return
    for key, stage in stages.items():
        if key in timings_ms:
            observe_stage(stage, timings_ms[key] / 1e3)


class Service:
    """Frames in, pick-and-place commands out.

    Parameters
    ----------
    settings : sorterbot_cloud.config.Settings
    detector : object with ``detect(image) -> Detections``
        ``image`` is an ndarray of shape (H, W, 3), uint8, RGB; boxes come back in its pixels.
    embedder : object with ``embed(crops) -> ndarray of shape (N, D), float32``
        L2-normalised embeddings of item crops.
    repository : sorterbot_cloud.db.Repository
        The store (``save_frame``, ``load_session``, ``save_commands``, ``arm_ids_of_session``).
    archive : object with ``staged(arm_id, session_id, image_name, data)`` and ``get(...)``
        Archive of the original frame bytes (disk, mirrored to S3 in the aws modes):
        ``staged`` is a context manager yielding the frame's URI that puts the bytes in
        place only when its block (the row's transaction) succeeds
        (:meth:`sorterbot_cloud.storage.DiskArchive.staged`).
    """

    def __init__(self, settings, *, detector, embedder, repository, archive) -> None:
        self.settings = settings
        self.detector = detector
        self.embedder = embedder
        self.repository = repository
        self.archive = archive
        # One forward pass at a time per process: torch already spreads one pass over all
        # cores (intra-op threads), so concurrent passes from request threads only
        # contend; decoding, storing and triggers still run in parallel.
        self.model_lock = threading.Lock()

    # ------------------------------------------------------------------ ingest
    def decode_and_detect(self, data: bytes, timer: _Timer | None = None) -> tuple[np.ndarray, Detections]:
        """Decode frame bytes and run the detector.

        Returns
        -------
        image : ndarray of shape (H, W, 3), uint8, RGB
        detections : Detections
            Boxes in the pixels of ``image``.

        Raises
        ------
        InvalidImage
            If the bytes are not a complete JPEG or PNG, or its size is out of bounds
            (:data:`~sorterbot_cloud.imaging.MAX_PIXELS`,
            :data:`~sorterbot_cloud.imaging.MAX_ASPECT_RATIO`).
        """
        timer = timer or _Timer()
        with timer.stage("decode"):
            image = decode_image(data, max_aspect_ratio=MAX_ASPECT_RATIO)
        with self.model_lock, timer.stage("detect"):
            detections = self.detector.detect(image)
        if not isinstance(detections, Detections):
            raise TypeError(f"detector must return Detections, got {type(detections).__name__}")
        return image, detections

    def embed_items(self, image: np.ndarray, detections: Detections) -> list[np.ndarray | None]:
        """Embed the item crops of one frame.

        Parameters
        ----------
        image : ndarray of shape (H, W, 3), uint8, RGB
        detections : Detections

        Returns
        -------
        embeddings : list of length N of (ndarray of shape (D,), float32, or None)
            Aligned with ``detections``: the item's embedding, None for a container (the
            form :meth:`Repository.save_frame <sorterbot_cloud.db.Repository.save_frame>` takes).

        Raises
        ------
        ValueError
            If the embedder answers a wrong shape or non-finite values.
        """
        from vectorizer import crop_items

        item_index = np.flatnonzero(detections.class_ids == ITEM_CLASS_ID)
        if len(item_index) == 0:
            return [None] * len(detections)
        crops = crop_items(image, detections.boxes_xyxy[item_index], margin=self.settings.crop_margin)
        with self.model_lock:
            embeddings = np.asarray(self.embedder.embed(crops), dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(item_index):
            raise ValueError(f"embedder must return ({len(item_index)}, D) embeddings, got {embeddings.shape}")
        if not np.all(np.isfinite(embeddings)):
            raise ValueError("embedder returned non-finite embeddings")
        return _aligned_to_detections(len(detections), item_index, embeddings)

    def item_colours(self, image: np.ndarray, detections: Detections) -> list[np.ndarray | None]:
        """Measure the CIELab colour of the item boxes of one frame (:func:`vectorizer.colour.colour_lab`).

        Parameters
        ----------
        image : ndarray of shape (H, W, 3), uint8, RGB
        detections : Detections

        Returns
        -------
        colours_lab : list of length N of (ndarray of shape (3,), float32, or None)
            Aligned with ``detections``: ``(L*, a*, b*)`` of the item, None for a container.
        """
        from vectorizer.colour import colour_lab

        item_index = np.flatnonzero(detections.class_ids == ITEM_CLASS_ID)
        if len(item_index) == 0:
            return [None] * len(detections)
        return _aligned_to_detections(len(detections), item_index, colour_lab(image, detections.boxes_xyxy[item_index]))

    def reembed_session(self, arm_id: Any, session_id: Any) -> int:
        """Embed a stored session's items again with the loaded embedder, from the archived frames.

        Embeddings of different embedder weights are not comparable, so after the
        embedder changes, sessions stored before must be re-embedded before their trigger
        (``sorterbot-cloud db reembed``). The stored boxes are kept (the detector is not
        run); each item is cut from its archived original frame exactly as at ingest
        (:meth:`embed_items`), and its colour measured again (:meth:`item_colours`; frames
        stored before colours were kept get theirs here). Every new embedding is computed
        first and then written in one transaction, so a failure leaves the session's old
        embeddings whole.

        Parameters
        ----------
        arm_id, session_id : str

        Returns
        -------
        int
            How many item detections were re-embedded (0 for a session without items).

        Raises
        ------
        BadRequest
            On a malformed id.
        UnknownSession
            If the session has no stored frame.
        ServiceUnavailable
            If a frame with items was stored without an archived image, or its archived
            image is missing (nothing is changed).
        """
        arm_id = validate_id("arm_id", arm_id)
        session_id = validate_id("session_id", session_id)
        new: dict[int, np.ndarray] = {}
        colours: dict[int, np.ndarray] = {}
        for frame in self.repository.embedded_detections(arm_id, session_id):
            if not frame["image_uri"]:
                raise ServiceUnavailable(f"frame {frame['frame_id']} of session {session_id!r} has no archived image to embed from")
            try:
                # by its key, not the stored URI: the URI names the data directory the frame
                # was archived under, which may have moved since (a copied or remounted volume)
                image = decode_image(self.archive.get(DiskArchive.key_of(arm_id, session_id, frame["image_name"])))
            except FileNotFoundError as exc:
                raise ServiceUnavailable(f"the archived image of frame {frame['frame_id']} is missing: {frame['image_uri']}") from exc
            boxes = frame["boxes_xyxy"]
            items = Detections(boxes, np.ones(len(boxes), np.float32), np.full(len(boxes), ITEM_CLASS_ID, np.int64))
            for det_id, embedding, colour in zip(frame["detection_ids"], self.embed_items(image, items),
                                                 self.item_colours(image, items), strict=True):
                new[det_id] = embedding
                colours[det_id] = colour
        return self.repository.replace_embeddings(new, colours) if new else 0

    def process_frame(self, arm_id: Any, session_id: Any, image_name: Any, data: bytes) -> dict:
        """Ingest one frame: validate, decode, detect, embed items and measure their colour, store, archive.

        Idempotent per ``(arm_id, session_id, image_name)``: posting the same frame again
        replaces its detections (the repository does it in one transaction).

        Parameters
        ----------
        arm_id, session_id : str
            1 to 64 of ``[A-Za-z0-9_.-]``.
        image_name : str
            ``<pulse width>.jpg`` (or ``.png``).
        data : bytes
            Encoded JPEG or PNG.

        Returns
        -------
        dict
            ``arm_id``, ``session_id``, ``image_name``, ``frame_id``, ``width_px``,
            ``height_px``, ``detections`` (``class``, ``class_id``, ``box_xyxy``,
            ``score`` each), ``n_items``, ``n_containers``, ``image_uri`` and
            ``timings_ms`` (``decode``, ``detect``, ``embed`` (the item crops' embeddings
            and colours), ``store``, ``total``).

        Raises
        ------
        BadRequest
            On a malformed id or image name.
        InvalidImage
            On empty, truncated or undecodable bytes.
        ServiceUnavailable
            If the database refuses the row (nothing is archived then; an earlier copy
            of the frame and its detections are kept).
        """
        timer = _Timer()
        arm_id = validate_id("arm_id", arm_id)
        session_id = validate_id("session_id", session_id)
        image_name = validate_image_name(image_name)
        image, detections = self.decode_and_detect(data, timer)
        height_px, width_px = image.shape[:2]
        frame = Frame(arm_id, session_id, image_name, width_px, height_px)
        with timer.stage("embed"):
            embeddings = self.embed_items(image, detections)
            colours_lab = self.item_colours(image, detections)
        with timer.stage("store"):
            # the file is put in place only once the row commits: a frame the database
            # refuses leaves no file, and a refused re-upload keeps the archived one
            with self.archive.staged(arm_id, session_id, image_name, bytes(data)) as image_uri:
                frame_id = self.repository.save_frame(frame, detections, embeddings, image_uri, colours_lab)
        timings = timer.finish()
        _observe_stages(timings, {"decode": "decode", "detect": "detect", "embed": "embed", "store": "store"})
        n_items = int((detections.class_ids == ITEM_CLASS_ID).sum())
        logger.info(
            "frame ingested",
            extra={"arm_id": arm_id, "session_id": session_id, "image_name": image_name,
                   "log_type": "process_image", "timings_ms": timings},
        )
        return {
            "arm_id": arm_id,
            "session_id": session_id,
            "image_name": image_name,
            "frame_id": int(frame_id) if frame_id is not None else None,
            "width_px": int(width_px),
            "height_px": int(height_px),
            "n_items": n_items,
            "n_containers": int(len(detections) - n_items),
            "detections": detections.to_records(),
            "image_uri": str(image_uri),
            "timings_ms": timings,
        }

    def predict(self, data: bytes) -> dict:
        """Detections for one image, without a session and without storing anything.

        Returns
        -------
        dict
            ``width_px``, ``height_px``, ``detections`` and ``timings_ms`` (``decode``,
            ``detect``, ``total``).

        Raises
        ------
        InvalidImage
            On empty, truncated or undecodable bytes.
        """
        timer = _Timer()
        image, detections = self.decode_and_detect(data, timer)
        return {
            "width_px": int(image.shape[1]),
            "height_px": int(image.shape[0]),
            "detections": detections.to_records(),
            "timings_ms": timer.finish(),
        }

    # ------------------------------------------------------------------ trigger
    def commands_for_session(self, arm_id: Any, session_id: Any, constants: Mapping[str, Any], *,
                             n_groups: int | None = None) -> dict:
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
        timer = _Timer()
        arm_id = validate_id("arm_id", arm_id)
        session_id = validate_id("session_id", session_id)
        arm_constants = ArmConstants.from_mapping(constants)
        from sorterbot_cloud import geometry, planner

        with timer.stage("load"):
            stored = list(self.repository.load_session(arm_id, session_id))
            frame_views = self.frame_views(arm_id, session_id)
        reference = None  # legacy mode: every detection placed once through the reference camera
        with timer.stage("geometry"):
            located = geometry.locate(stored, arm_constants)
            if not arm_constants.calibrated and self.settings.legacy_camera == "reference":
                nominal = _reference_camera(arm_constants)
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
                    items = _with_nominal_shapes(items, stored, arm_constants, placed=reference)
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
            "objects": [_object_record(o, cluster_of_item.get(o.object_id), by_id) for o in objects],
            "commands": [_command_record(c) for c in commands],
            "wire": [c.to_wire() for c in commands],
        }
        # the stored copy carries the timings up to the store; the answer adds the store's
        result["timings_ms"] = timer.finish()
        with timer.stage("store"):
            self.repository.save_commands(arm_id, session_id, arm_constants.to_mapping(), result)
        result = dict(result, timings_ms=timer.finish())
        _observe_stages(result["timings_ms"], {"total": "trigger"})
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
        from sorterbot_cloud import dedup

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
            The session's detections, from :func:`geometry.locate`.
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
        from sorterbot_cloud import dedup

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
                legacy_camera=_reference_camera(arm_constants) if self.settings.legacy_camera == "reference" else None,
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
            mode, or legacy items measured by :func:`_with_nominal_shapes`).
        size_weight, height_weight, group_distance, colour_weight : float, optional
            Override the settings' weights and the distance (for tuning,
            ``sorterbot-cloud tune-grouping``).
        n_groups : int, optional
            Diagnostics: this many groups instead of the chosen number (:func:`planner.group_items`).

        Returns
        -------
        cluster_ids : ndarray of shape (len(items),), int64
        """
        from sorterbot_cloud import planner

        features = _item_embedding_matrix(items)
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


def _aligned_to_detections(n_detections: int, item_index: np.ndarray, item_values: np.ndarray) -> list[np.ndarray | None]:
    """Rows of ``item_values`` (one per item detection, in ``item_index`` order) placed in a
    list of ``n_detections`` aligned with the frame's detections, None for containers."""
    out: list[np.ndarray | None] = [None] * n_detections
    for index, value in zip(item_index, item_values, strict=True):
        out[int(index)] = value
    return out


def _reference_camera(arm_constants: ArmConstants) -> ArmConstants:
    """The reference arm's calibrated constants with this arm's rotation range (legacy mode's assumed camera)."""
    import dataclasses

    return dataclasses.replace(
        ArmConstants.reference(), rotation_range_as_deg=arm_constants.rotation_range_as_deg,
        rotation_range_as_pw=arm_constants.rotation_range_as_pw,
    )


def _with_nominal_shapes(items: list[ArmObject], stored: list[StoredDetection], arm_constants: ArmConstants,
                         placed: Mapping[int, Any] | None = None) -> list[ArmObject]:
    """Legacy mode: the items with a size and height measured through the reference camera.

    Legacy constants carry no camera, so their sizes are box sides in pixels, which
    shrink with distance and say nothing of height. For grouping only (positions and
    pulse widths stay those of the legacy formulas), each item's boxes are fitted again
    with the reference arm's camera (:meth:`CameraModel.reference`, docs/design.rst: the
    Raspberry Pi camera v2 and the simulator's mounting) and the arm's own rotation
    range: :func:`geometry.locate` and :func:`geometry.refine_objects` as in calibrated
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
        (:func:`geometry.locate` with :func:`_reference_camera`), by ``detection_id``;
        placed here when not given.

    Returns
    -------
    list of ArmObject
        Copies of ``items`` with ``size_mm`` and ``height_mm`` replaced, same order.
    """
    import dataclasses

    from sorterbot_cloud import dedup, geometry

    nominal = _reference_camera(arm_constants)
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


def _item_embedding_matrix(items: list[ArmObject]) -> np.ndarray:
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


def _object_record(obj: ArmObject, cluster_id: int | None, by_id: Mapping[int, StoredDetection]) -> dict:
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


def _position_record(obj: ArmObject) -> dict:
    return {
        "object_id": int(obj.object_id),
        "pw0": _round(obj.position.pw0),
        "pw1": _round(obj.position.pw1),
        "r_mm": _round(obj.position.r_mm),
        "theta_deg": _round(obj.position.theta_deg),
    }


def _command_record(command: Command) -> dict:
    return {
        "pick": _position_record(command.item),
        "place": _position_record(command.container),
        "cluster_id": int(command.cluster_id),
    }


__all__ = ["Service", "validate_id", "validate_image_name", "SorterBotError", "InvalidImage"]
