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
from typing import Any, Mapping

import numpy as np

from sorterbot_cloud.errors import InvalidImage, ServiceUnavailable, SorterBotError
from sorterbot_cloud.ids import check_body_arm_id, validate_id, validate_image_name
from sorterbot_cloud.imaging import MAX_ASPECT_RATIO, decode_image
from sorterbot_cloud.storage import DiskArchive
from sorterbot_cloud.structures import (
    ITEM_CLASS_ID,
    Detections,
    Frame,
)
from sorterbot_cloud.timing import StageTimer, observe_stages
from sorterbot_cloud.trigger import SessionTrigger

logger = logging.getLogger(__name__)

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

    @property
    def trigger(self) -> SessionTrigger:
        """The session trigger on this service's current settings, repository and embedder."""
        return SessionTrigger(self.settings, self.repository, self.embedder)

    # ------------------------------------------------------------------ ingest
    def decode_and_detect(self, data: bytes, timer: StageTimer | None = None) -> tuple[np.ndarray, Detections]:
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
        timer = timer or StageTimer()
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
        from sorterbot_cloud.embedding import crop_items

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
        """Measure the CIELab colour of the item boxes of one frame (:func:`sorterbot_cloud.embedding.colour.colour_lab`).

        Parameters
        ----------
        image : ndarray of shape (H, W, 3), uint8, RGB
        detections : Detections

        Returns
        -------
        colours_lab : list of length N of (ndarray of shape (3,), float32, or None)
            Aligned with ``detections``: ``(L*, a*, b*)`` of the item, None for a container.
        """
        from sorterbot_cloud.embedding.colour import colour_lab

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
        timer = StageTimer()
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
        observe_stages(timings, {"decode": "decode", "detect": "detect", "embed": "embed", "store": "store"})
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
        timer = StageTimer()
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

        :meth:`SessionTrigger.run <sorterbot_cloud.trigger.SessionTrigger.run>` on this
        service's settings, repository and embedder (see there for the result and errors).
        """
        return self.trigger.run(arm_id, session_id, constants, n_groups=n_groups)


def _aligned_to_detections(n_detections: int, item_index: np.ndarray, item_values: np.ndarray) -> list[np.ndarray | None]:
    """Rows of ``item_values`` (one per item detection, in ``item_index`` order) placed in a
    list of ``n_detections`` aligned with the frame's detections, None for containers."""
    out: list[np.ndarray | None] = [None] * n_detections
    for index, value in zip(item_index, item_values, strict=True):
        out[int(index)] = value
    return out


__all__ = ["Service", "check_body_arm_id", "validate_id", "validate_image_name", "SorterBotError", "InvalidImage"]
