"""All of the service's SQL: frames, detections, embeddings and commands.

Every query is parameterised; no identifier is built from input. Each public method is
one unit of work: it borrows a pooled connection, runs in one transaction (committed when
the method returns, rolled back when it raises) and gives the connection back.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator, Sequence

import numpy as np
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from sorterbot_cloud.errors import BadRequest, ServiceUnavailable, UnknownSession
from sorterbot_cloud.structures import ID_PATTERN, Detections, Frame, StoredDetection

#: Length of an item embedding (ResNet18 penultimate layer, CONTRIBUTING.md), the
#: dimension of the ``detections.embedding vector(512)`` column.
EMBEDDING_DIM = 512

_UPSERT_FRAME = """
INSERT INTO frames (arm_id, session_id, image_name, pw0, width_px, height_px, image_uri)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (arm_id, session_id, image_name) DO UPDATE
SET pw0 = EXCLUDED.pw0, width_px = EXCLUDED.width_px, height_px = EXCLUDED.height_px,
    image_uri = EXCLUDED.image_uri, updated_at = now()
RETURNING id
"""

_INSERT_DETECTION = """
INSERT INTO detections (frame_id, det_index, class_id, x_min, y_min, x_max, y_max, score, embedding, colour_lab)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %b, %s)
"""

#: The query behind :meth:`Repository.load_session` (also timed by ``db bench``).
LOAD_SESSION_SQL = """
SELECT d.id, f.image_name, f.pw0, f.width_px, f.height_px,
       d.x_min, d.y_min, d.x_max, d.y_max, d.score, d.class_id, d.embedding, d.colour_lab
FROM frames f
LEFT JOIN detections d ON d.frame_id = f.id
WHERE f.arm_id = %s AND f.session_id = %s
ORDER BY f.pw0, f.image_name, d.det_index
"""


def _json_default(value: Any) -> Any:
    """Make numpy scalars and arrays JSON-serialisable."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, allow_nan=False)


def _check_ids(**ids: str) -> None:
    for name, value in ids.items():
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise BadRequest(f"{name} must be 1 to 64 of letters, digits, '_', '-', '.', got {value!r}")


def _colour_param(colour: np.ndarray | None, index: int) -> list[float] | None:
    if colour is None:
        return None
    values = np.asarray(colour, dtype=np.float64)
    if values.shape != (3,):
        raise ValueError(f"colours_lab[{index}] must have shape (3,), got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"colours_lab[{index}] must be finite")
    return [float(v) for v in values]


def _embedding_param(embedding: np.ndarray | None, index: int) -> np.ndarray | None:
    if embedding is None:
        return None
    vector = np.asarray(embedding, dtype=np.float32)
    if vector.shape != (EMBEDDING_DIM,):
        raise ValueError(f"embeddings[{index}] must have shape ({EMBEDDING_DIM},), got {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"embeddings[{index}] must be finite")
    return vector


class Repository:
    """Stores and reads sorting sessions.

    Parameters
    ----------
    pool : psycopg_pool.ConnectionPool
        Connections with pgvector's adapters registered (:class:`~sorterbot_cloud.db.Database`
        builds such a pool).

    Notes
    -----
    Every method raises :class:`~sorterbot_cloud.errors.ServiceUnavailable` when no
    connection can be had (pool timeout) or the connection breaks.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise ServiceUnavailable("no database connection available") from exc
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable("database connection failed") from exc

    def ping(self, timeout_s: float = 2.0) -> bool:
        """Return True when a pooled connection answers ``SELECT 1`` within ``timeout_s`` (for ``/readyz``)."""
        try:
            with self.pool.connection(timeout=timeout_s) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except (psycopg.Error, PoolTimeout):
            return False

    # ------------------------------------------------------------------ frames

    def save_frame(
        self,
        frame: Frame,
        detections: Detections,
        embeddings: Sequence[np.ndarray | None] | None,
        image_uri: str | None,
        colours_lab: Sequence[np.ndarray | None] | None = None,
    ) -> int:
        """Store a frame and its detections, replacing any earlier post of the same frame.

        The frame is keyed by ``(arm_id, session_id, image_name)``. In one transaction the
        frame row is inserted or updated (``INSERT ... ON CONFLICT DO UPDATE``, which
        locks it, so two concurrent posts of one frame run one after the other), its old
        detections are deleted and the new ones inserted. The frame id stays the same
        across re-posts.

        Parameters
        ----------
        frame : Frame
        detections : Detections
            N boxes (``boxes_xyxy`` (N, 4) float32 pixels, ``scores`` (N,), ``class_ids`` (N,)).
        embeddings : sequence of length N of (ndarray of shape (512,), float32, or None), or ndarray of shape (N, 512), or None
            Item embeddings (L2-normalised), aligned with ``detections``; None for
            containers (or for every detection when ``embeddings`` is None).
        image_uri : str or None
            Where the original image is archived.
        colours_lab : sequence of length N of (ndarray of shape (3,), float, or None), or None
            CIELab colour of each item (:func:`sorterbot_cloud.embedding.colour.colour_lab`), aligned with
            ``detections``; None for containers (or for every detection when None).

        Returns
        -------
        int
            The frame's id.

        Raises
        ------
        ValueError
            If ``embeddings`` or ``colours_lab`` does not have N entries, or one entry is
            not a finite (512,) (respectively (3,)) vector.
        ServiceUnavailable
            If the database cannot be reached.
        """
        n = len(detections)
        if embeddings is None:
            embeddings = [None] * n
        if len(embeddings) != n:
            raise ValueError(f"embeddings must have one entry per detection ({n}), got {len(embeddings)}")
        if colours_lab is None:
            colours_lab = [None] * n
        if len(colours_lab) != n:
            raise ValueError(f"colours_lab must have one entry per detection ({n}), got {len(colours_lab)}")
        rows = [
            (
                int(i),
                int(detections.class_ids[i]),
                *(float(v) for v in detections.boxes_xyxy[i]),
                float(detections.scores[i]),
                _embedding_param(embeddings[i], i),
                _colour_param(colours_lab[i], i),
            )
            for i in range(n)
        ]
        with self._connection() as conn, conn.transaction():
            conn.execute("INSERT INTO arms (arm_id) VALUES (%s) ON CONFLICT DO NOTHING", (frame.arm_id,))
            conn.execute(
                "INSERT INTO sessions (arm_id, session_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (frame.arm_id, frame.session_id),
            )
            (frame_id,) = conn.execute(
                _UPSERT_FRAME,
                (
                    frame.arm_id,
                    frame.session_id,
                    frame.image_name,
                    float(frame.pw0),
                    int(frame.width_px),
                    int(frame.height_px),
                    image_uri,
                ),
            ).fetchone()
            conn.execute("DELETE FROM detections WHERE frame_id = %s", (frame_id,))
            if rows:
                with conn.cursor() as cur:
                    cur.executemany(_INSERT_DETECTION, [(frame_id, *row) for row in rows])
        return int(frame_id)

    def load_session(self, arm_id: str, session_id: str) -> list[StoredDetection]:
        """Return every detection of a session.

        Ordered by the frame's pulse width ``pw0``, then image name, then the detection's
        position in the posted :class:`Detections`, so the same stored session always
        reads back in the same order.

        Returns
        -------
        list of StoredDetection
            ``box_xyxy`` (4,) float32 pixels; ``embedding`` (512,) float32 or None;
            ``colour_lab`` (3,) float32 or None. Empty
            when the session's frames hold no detection.

        Raises
        ------
        BadRequest
            If an id is malformed.
        UnknownSession
            If the session has no stored frame.
        ServiceUnavailable
            If the database cannot be reached.
        """
        _check_ids(arm_id=arm_id, session_id=session_id)
        with self._connection() as conn, conn.cursor(binary=True) as cur:
            rows = cur.execute(LOAD_SESSION_SQL, (arm_id, session_id)).fetchall()
        if not rows:
            raise UnknownSession(f"no frame stored for arm_id={arm_id!r}, session_id={session_id!r}")
        result = []
        for det_id, image_name, pw0, width_px, height_px, x0, y0, x1, y1, score, class_id, embedding, colour in rows:
            if det_id is None:  # a frame without detections
                continue
            result.append(
                StoredDetection(
                    detection_id=int(det_id),
                    image_name=image_name,
                    frame_pw0=float(pw0),
                    width_px=int(width_px),
                    height_px=int(height_px),
                    box_xyxy=np.array([x0, y0, x1, y1], dtype=np.float32),
                    score=float(score),
                    class_id=int(class_id),
                    embedding=None if embedding is None else np.array(embedding.to_numpy(), dtype=np.float32),
                    colour_lab=None if colour is None else np.array(colour, dtype=np.float32),
                )
            )
        return result

    def session_frames(self, arm_id: str, session_id: str) -> list[dict]:
        """Return the frames of a session, ordered by ``pw0`` then image name.

        Returns
        -------
        list of dict
            ``frame_id``, ``image_name``, ``pw0`` (µs), ``width_px``, ``height_px``,
            ``image_uri`` (str or None), ``n_detections``, ``updated_at`` (datetime).

        Raises
        ------
        BadRequest
            If an id is malformed.
        UnknownSession
            If the session has no stored frame.
        """
        _check_ids(arm_id=arm_id, session_id=session_id)
        with self._connection() as conn:
            rows = conn.execute(
                """
                SELECT f.id, f.image_name, f.pw0, f.width_px, f.height_px, f.image_uri,
                       count(d.id), f.updated_at
                FROM frames f LEFT JOIN detections d ON d.frame_id = f.id
                WHERE f.arm_id = %s AND f.session_id = %s
                GROUP BY f.id
                ORDER BY f.pw0, f.image_name
                """,
                (arm_id, session_id),
            ).fetchall()
        if not rows:
            raise UnknownSession(f"no frame stored for arm_id={arm_id!r}, session_id={session_id!r}")
        keys = ("frame_id", "image_name", "pw0", "width_px", "height_px", "image_uri", "n_detections", "updated_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def embedded_detections(self, arm_id: str, session_id: str) -> list[dict]:
        """Return the session's detections that carry an embedding (its items), frame by frame.

        Returns
        -------
        list of dict
            One per frame that has such detections, ordered like :meth:`session_frames`:
            ``frame_id``, ``image_name``, ``image_uri`` (str or None), ``detection_ids`` (list
            of int) and ``boxes_xyxy`` (ndarray of shape (N, 4), float32, pixels), in
            detection order.

        Raises
        ------
        BadRequest
            If an id is malformed.
        UnknownSession
            If the session has no stored frame.
        """
        _check_ids(arm_id=arm_id, session_id=session_id)
        with self._connection() as conn:
            rows = conn.execute(
                """
                SELECT f.id, f.image_name, f.image_uri, d.id, d.x_min, d.y_min, d.x_max, d.y_max
                FROM frames f
                LEFT JOIN detections d ON d.frame_id = f.id AND d.embedding IS NOT NULL
                WHERE f.arm_id = %s AND f.session_id = %s
                ORDER BY f.pw0, f.image_name, d.det_index
                """,
                (arm_id, session_id),
            ).fetchall()
        if not rows:
            raise UnknownSession(f"no frame stored for arm_id={arm_id!r}, session_id={session_id!r}")
        out: list[dict] = []
        for frame_id, image_name, image_uri, det_id, *box in rows:
            if det_id is None:  # a frame without items
                continue
            if not out or out[-1]["frame_id"] != frame_id:
                out.append({"frame_id": int(frame_id), "image_name": image_name, "image_uri": image_uri, "detection_ids": [], "boxes_xyxy": []})
            out[-1]["detection_ids"].append(int(det_id))
            out[-1]["boxes_xyxy"].append(box)
        for frame in out:
            frame["boxes_xyxy"] = np.array(frame["boxes_xyxy"], dtype=np.float32).reshape(-1, 4)
        return out

    def replace_embeddings(self, embeddings: dict[int, np.ndarray], colours_lab: dict[int, np.ndarray] | None = None) -> int:
        """Overwrite the embeddings (and colours) of stored detections, all in one transaction.

        For re-embedding stored sessions after the embedder's weights change
        (:meth:`Service.reembed_session <sorterbot_cloud.service.Service.reembed_session>`):
        embeddings of two different models are not comparable, so a session must not mix them.

        Parameters
        ----------
        embeddings : dict of int to ndarray of shape (512,), float32
            Detection id -> its new L2-normalised embedding. Only detections that already
            carry an embedding (items) are updated.
        colours_lab : dict of int to ndarray of shape (3,), float, optional
            Detection id -> its CIELab colour (:func:`sorterbot_cloud.embedding.colour.colour_lab`), for
            the same ids as ``embeddings``; without it the stored colours are kept.

        Returns
        -------
        int
            How many detections were updated.

        Raises
        ------
        ValueError
            If a vector is not a finite (512,) vector, a colour not a finite (3,) vector,
            ``colours_lab`` has other ids than ``embeddings``, or an id names no embedded
            detection (then nothing is changed).
        """
        if colours_lab is not None and set(colours_lab) != set(embeddings):
            raise ValueError("colours_lab must have the same detection ids as embeddings")
        params = [(_embedding_param(vector, int(det_id)), int(det_id)) for det_id, vector in embeddings.items()]
        colours = {int(det_id): _colour_param(c, int(det_id)) for det_id, c in (colours_lab or {}).items()}
        with self._connection() as conn, conn.transaction():
            updated = 0
            with conn.cursor() as cur:
                for vector, det_id in params:
                    if colours_lab is None:
                        cur.execute("UPDATE detections SET embedding = %b WHERE id = %s AND embedding IS NOT NULL", (vector, det_id))
                    else:
                        cur.execute("UPDATE detections SET embedding = %b, colour_lab = %s WHERE id = %s AND embedding IS NOT NULL",
                                    (vector, colours[det_id], det_id))
                    if cur.rowcount != 1:
                        raise ValueError(f"detection {det_id} does not exist or has no embedding")
                    updated += 1
        return updated

    # ---------------------------------------------------------------- sessions

    def arm_ids_of_session(self, session_id: str) -> list[str]:
        """Return the arms that stored at least one frame under ``session_id``, sorted.

        The original client's trigger may carry no ``arm_id``; the caller then picks the
        single arm returned (and asks for one when there are several).

        Raises
        ------
        BadRequest
            If ``session_id`` is malformed.
        """
        _check_ids(session_id=session_id)
        with self._connection() as conn:
            rows = conn.execute(
                """
                SELECT s.arm_id FROM sessions s
                WHERE s.session_id = %s
                  AND EXISTS (SELECT 1 FROM frames f WHERE f.arm_id = s.arm_id AND f.session_id = s.session_id)
                ORDER BY s.arm_id
                """,
                (session_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def list_sessions(self, arm_id: str | None = None, *, limit: int | None = 100) -> list[dict]:
        """Return the most recently created sessions, newest first.

        Parameters
        ----------
        arm_id : str, optional
            Only this arm's sessions.
        limit : int or None
            At most this many; None: all of them.

        Returns
        -------
        list of dict
            ``arm_id``, ``session_id``, ``n_frames``, ``n_detections``, ``created_at``,
            ``updated_at`` (last frame stored; None without frames).

        Raises
        ------
        BadRequest
            If ``arm_id`` is malformed or ``limit`` is not positive.
        """
        if arm_id is not None:
            _check_ids(arm_id=arm_id)
        if limit is not None and int(limit) <= 0:
            raise BadRequest(f"limit must be positive, got {limit}")
        with self._connection() as conn:
            rows = conn.execute(
                """
                SELECT s.arm_id, s.session_id, count(DISTINCT f.id), count(d.id), s.created_at, max(f.updated_at)
                FROM sessions s
                LEFT JOIN frames f ON f.arm_id = s.arm_id AND f.session_id = s.session_id
                LEFT JOIN detections d ON d.frame_id = f.id
                WHERE %(arm_id)s::text IS NULL OR s.arm_id = %(arm_id)s
                GROUP BY s.id
                ORDER BY s.created_at DESC, s.arm_id, s.session_id
                LIMIT %(limit)s
                """,
                {"arm_id": arm_id, "limit": None if limit is None else int(limit)},  # LIMIT NULL: no limit
            ).fetchall()
        keys = ("arm_id", "session_id", "n_frames", "n_detections", "created_at", "updated_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def list_arms(self) -> list[dict]:
        """Return every arm with its number of sessions, the arm with the newest session first.

        Returns
        -------
        list of dict
            ``arm_id``, ``n_sessions``, ``created_at`` (first seen), ``last_session_at``
            (when its newest session was created; None without sessions).
        """
        with self._connection() as conn:
            rows = conn.execute(
                """
                SELECT a.arm_id, count(s.id), a.created_at, max(s.created_at)
                FROM arms a LEFT JOIN sessions s ON s.arm_id = a.arm_id
                GROUP BY a.arm_id
                ORDER BY max(s.created_at) DESC NULLS LAST, a.arm_id
                """
            ).fetchall()
        keys = ("arm_id", "n_sessions", "created_at", "last_session_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def session_page(self, arm_id: str | None = None, *, limit: int = 20, offset: int = 0) -> dict:
        """Return one page of sessions, newest first, with whether commands were computed.

        Parameters
        ----------
        arm_id : str, optional
            Only this arm's sessions.
        limit : int
            Sessions per page (1 to 500).
        offset : int
            Sessions skipped before the page (0 or more).

        Returns
        -------
        dict
            ``total`` (int, sessions matching ``arm_id``) and ``sessions``: list of dict
            with ``arm_id``, ``session_id``, ``created_at``, ``n_frames``,
            ``n_detections``, ``updated_at`` (last frame stored; None without frames),
            ``n_triggers`` (commands computed so far), ``commands_at`` (when the latest
            were; None if never) and ``n_commands`` (moves of the latest; None if never).
            Ordered by creation time, newest first (ties: newest row first).

        Raises
        ------
        BadRequest
            If ``arm_id`` is malformed, ``limit`` is not 1 to 500 or ``offset`` is negative.
        """
        if arm_id is not None:
            _check_ids(arm_id=arm_id)
        if not 1 <= int(limit) <= 500:
            raise BadRequest(f"limit must be 1 to 500, got {limit}")
        if int(offset) < 0:
            raise BadRequest(f"offset must be 0 or more, got {offset}")
        params = {"arm_id": arm_id, "limit": int(limit), "offset": int(offset)}
        with self._connection() as conn, conn.transaction():
            (total,) = conn.execute(
                "SELECT count(*) FROM sessions WHERE %(arm_id)s::text IS NULL OR arm_id = %(arm_id)s", params
            ).fetchone()
            rows = conn.execute(
                """
                SELECT s.arm_id, s.session_id, s.created_at, fr.n_frames, fr.n_detections, fr.updated_at,
                       cm.n_triggers, cm.commands_at, latest.n_commands
                FROM sessions s
                CROSS JOIN LATERAL (
                    SELECT count(DISTINCT f.id) AS n_frames, count(d.id) AS n_detections, max(f.updated_at) AS updated_at
                    FROM frames f LEFT JOIN detections d ON d.frame_id = f.id
                    WHERE f.arm_id = s.arm_id AND f.session_id = s.session_id
                ) fr
                CROSS JOIN LATERAL (
                    SELECT count(*) AS n_triggers, max(c.created_at) AS commands_at
                    FROM commands c WHERE c.arm_id = s.arm_id AND c.session_id = s.session_id
                ) cm
                LEFT JOIN LATERAL (
                    SELECT CASE WHEN jsonb_typeof(c.result -> 'commands') = 'array'
                                THEN jsonb_array_length(c.result -> 'commands') END AS n_commands
                    FROM commands c WHERE c.arm_id = s.arm_id AND c.session_id = s.session_id
                    ORDER BY c.id DESC LIMIT 1
                ) latest ON true
                WHERE %(arm_id)s::text IS NULL OR s.arm_id = %(arm_id)s
                ORDER BY s.created_at DESC, s.id DESC
                LIMIT %(limit)s OFFSET %(offset)s
                """,
                params,
            ).fetchall()
        keys = ("arm_id", "session_id", "created_at", "n_frames", "n_detections", "updated_at",
                "n_triggers", "commands_at", "n_commands")
        return {"total": int(total), "sessions": [dict(zip(keys, row, strict=True)) for row in rows]}

    def delete_session(self, arm_id: str, session_id: str) -> bool:
        """Delete a session with its frames, detections and commands (foreign keys cascade).

        Returns
        -------
        bool
            True if the session existed. Archived images are not touched.

        Raises
        ------
        BadRequest
            If an id is malformed.
        """
        _check_ids(arm_id=arm_id, session_id=session_id)
        with self._connection() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE arm_id = %s AND session_id = %s", (arm_id, session_id))
            return cur.rowcount > 0

    # ---------------------------------------------------------------- commands

    def save_commands(self, arm_id: str, session_id: str, constants: dict, result: Any) -> int:
        """Record the commands answered to a session trigger.

        Parameters
        ----------
        constants : dict
            The trigger's arm constants (stored as ``jsonb``).
        result : dict or list
            What was answered (JSON-serialisable; numpy scalars and arrays are converted).

        Returns
        -------
        int
            The record's id (increasing: the latest record has the largest id).

        Raises
        ------
        BadRequest
            If an id is malformed.
        UnknownSession
            If the session was never stored.
        ValueError
            If ``constants`` or ``result`` cannot be written as JSON (NaN included).
        """
        _check_ids(arm_id=arm_id, session_id=session_id)
        try:
            with self._connection() as conn:
                (record_id,) = conn.execute(
                    "INSERT INTO commands (arm_id, session_id, constants, result) VALUES (%s, %s, %s, %s) RETURNING id",
                    (arm_id, session_id, Jsonb(constants, dumps=_dumps), Jsonb(result, dumps=_dumps)),
                ).fetchone()
        except psycopg.errors.ForeignKeyViolation as exc:
            raise UnknownSession(f"no session arm_id={arm_id!r}, session_id={session_id!r}") from exc
        return int(record_id)

    def latest_commands(self, arm_id: str, session_id: str) -> dict | None:
        """Return the latest commands record of a session, or None if there is none.

        Returns
        -------
        dict or None
            ``command_id`` (int), ``constants`` (dict), ``result`` (as saved),
            ``created_at`` (datetime).

        Raises
        ------
        BadRequest
            If an id is malformed.
        """
        _check_ids(arm_id=arm_id, session_id=session_id)
        with self._connection() as conn:
            row = conn.execute(
                """
                SELECT id, constants, result, created_at FROM commands
                WHERE arm_id = %s AND session_id = %s
                ORDER BY id DESC LIMIT 1
                """,
                (arm_id, session_id),
            ).fetchone()
        if row is None:
            return None
        record_id, constants, result, created_at = row
        created: datetime = created_at
        return {"command_id": int(record_id), "constants": constants, "result": result, "created_at": created}
