"""Store benchmark: ``python -m sorterbot_cloud.db.bench``.

Times, on a real PostgreSQL (a throw-away embedded server unless ``--pg-conn`` is given):

- ``save_frame``: one frame with its detections and item embeddings (the ingest's store
  stage), as a fresh post and as a re-post of the same frame;
- ``load_session``: every detection of a session of ``--frames`` frames (the session
  trigger's only database read);
- references measured in the same process, so ratios hold across machines:
  ``select_1`` (one round trip on a pooled connection) and ``load_session_text`` (the same
  query with embeddings read back as text, the alternative to pgvector's binary format).

Prints medians (ms) over ``--repeats`` runs and the ratios to the references.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from sorterbot_cloud.db.database import Database
from sorterbot_cloud.db.repository import EMBEDDING_DIM, LOAD_SESSION_SQL, Repository
from sorterbot_cloud.db.server import start_embedded
from sorterbot_cloud.structures import CONTAINER_CLASS_ID, ITEM_CLASS_ID, Detections, Frame


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _frame_payload(rng: np.random.Generator, n_detections: int) -> tuple[Detections, list]:
    xy = rng.uniform(0, 1500, size=(n_detections, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(20, 140, size=(n_detections, 2)).astype(np.float32)], axis=1)
    class_ids = np.array([CONTAINER_CLASS_ID] * 2 + [ITEM_CLASS_ID] * (n_detections - 2))[:n_detections]
    embeddings = []
    for c in class_ids:
        v = rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
        embeddings.append(None if c == CONTAINER_CLASS_ID else v / np.linalg.norm(v))
    return Detections(boxes, rng.uniform(0.5, 1, n_detections).astype(np.float32), class_ids), embeddings


def run(conninfo: str, *, n_frames: int = 20, n_detections: int = 10, repeats: int = 30, seed: int = 0) -> dict:
    """Run the benchmark on ``conninfo``'s database and return the medians (ms) and ratios."""
    rng = np.random.default_rng(seed)
    with Database(conninfo, max_size=2) as database:
        repository = Repository(database.pool)
        session_id = f"bench_{int(time.time() * 1000)}"
        payloads = [_frame_payload(rng, n_detections) for _ in range(n_frames)]
        for k, (detections, embeddings) in enumerate(payloads):
            repository.save_frame(
                Frame("BENCH", session_id, f"{1000 + 50 * k}.jpg", 1640, 1232), detections, embeddings, None
            )
        counter = iter(range(10**9))

        def save_new() -> None:
            detections, embeddings = payloads[0]
            name = f"{5000 + next(counter)}.jpg"
            repository.save_frame(Frame("BENCH", f"{session_id}_new", name, 1640, 1232), detections, embeddings, None)

        def save_again() -> None:
            detections, embeddings = payloads[0]
            repository.save_frame(Frame("BENCH", session_id, "1000.jpg", 1640, 1232), detections, embeddings, None)

        def select_1() -> None:
            with database.pool.connection() as conn:
                conn.execute("SELECT 1").fetchone()

        def load_text() -> None:
            with database.pool.connection() as conn:
                rows = conn.execute(LOAD_SESSION_SQL, ("BENCH", session_id)).fetchall()
            [np.array(r[-1].to_numpy(), np.float32) for r in rows if r[-1] is not None]

        loaded = repository.load_session("BENCH", session_id)
        if len(loaded) != n_frames * n_detections:
            raise RuntimeError(f"expected {n_frames * n_detections} detections back, got {len(loaded)}")
        medians = {
            "save_frame_new": _median_ms(save_new, repeats),
            "save_frame_repost": _median_ms(save_again, repeats),
            "load_session": _median_ms(lambda: repository.load_session("BENCH", session_id), repeats),
            "load_session_text": _median_ms(load_text, repeats),
            "select_1": _median_ms(select_1, repeats),
        }
        repository.delete_session("BENCH", session_id)
        repository.delete_session("BENCH", f"{session_id}_new")
    ratios = {
        "save_frame_new / select_1": medians["save_frame_new"] / medians["select_1"],
        "load_session / select_1": medians["load_session"] / medians["select_1"],
        "load_session / load_session_text": medians["load_session"] / medians["load_session_text"],
    }
    return {"medians_ms": medians, "ratios": ratios}


def run_and_print(pg_conn: str | None = None, frames: int = 20, detections: int = 10, repeats: int = 30) -> dict:
    """Run :func:`run` (on a throw-away embedded server when ``pg_conn`` is None) and print it.

    Parameters
    ----------
    pg_conn : str, optional
        libpq URI of the database to measure.
    frames, detections, repeats : int
        Frames of the benchmark session, detections per frame (2 containers, the rest
        items), repeats per measured call.

    Returns
    -------
    dict
        :func:`run`'s result.
    """
    tmp = None
    server = None
    conninfo = pg_conn
    if conninfo is None:
        tmp = Path(tempfile.mkdtemp(prefix="sorterbot-bench-pg-"))
        server = start_embedded(tmp / "pgdata")
        conninfo = server.ensure_database("bench")
    try:
        result = run(conninfo, n_frames=frames, n_detections=detections, repeats=repeats)
    finally:
        if server is not None:
            server.release()
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"store benchmark: {frames} frames x {detections} detections, {repeats} repeats")
    for name, value in result["medians_ms"].items():
        print(f"  {name:<20} median {value:8.2f} ms")
    for name, value in result["ratios"].items():
        print(f"  {name:<34} {value:8.2f}")
    return result
