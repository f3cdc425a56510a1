"""Repository against a real PostgreSQL database built by the migrations (see conftest.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sorterbot_cloud.db import EMBEDDING_DIM, Database
from sorterbot_cloud.db.database import RECONNECT_MAX_DELAY_S
from sorterbot_cloud.errors import BadRequest, ServiceUnavailable, UnknownSession
from sorterbot_cloud.structures import CONTAINER_CLASS_ID, ITEM_CLASS_ID, Detections, Frame


def make_detections(rng: np.random.Generator, n: int, n_containers: int = 1) -> tuple[Detections, list]:
    """``n`` random boxes on a 1640x1232 frame, the first ``n_containers`` containers."""
    xy = rng.uniform(0, 1500, size=(n, 2)).astype(np.float32)
    wh = rng.uniform(10, 140, size=(n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    class_ids = np.array([CONTAINER_CLASS_ID] * min(n, n_containers) + [ITEM_CLASS_ID] * max(0, n - n_containers))
    scores = rng.uniform(0.5, 1.0, size=n).astype(np.float32)
    embeddings = []
    for c in class_ids:
        if c == CONTAINER_CLASS_ID:
            embeddings.append(None)
        else:
            v = rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
            embeddings.append(v / np.linalg.norm(v))
    return Detections(boxes, scores, class_ids), embeddings


def frame(image_name: str = "1200.jpg", arm_id: str = "ARM001", session_id: str = "sess_1") -> Frame:
    return Frame(arm_id, session_id, image_name, 1640, 1232)


def count(database: Database, table: str) -> int:
    assert table in {"arms", "sessions", "frames", "detections", "commands"}  # a fixed list, not input
    with database.pool.connection() as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_save_and_load_round_trip(repository):
    rng = np.random.default_rng(0)
    detections, embeddings = make_detections(rng, 5, n_containers=2)
    frame_id = repository.save_frame(frame("1250.5.jpg"), detections, embeddings, "file:///archive/1250.5.jpg")

    stored = repository.load_session("ARM001", "sess_1")

    assert isinstance(frame_id, int)
    assert len(stored) == 5
    for i, s in enumerate(stored):
        assert (s.image_name, s.frame_pw0, s.width_px, s.height_px) == ("1250.5.jpg", 1250.5, 1640, 1232)
        assert s.box_xyxy.dtype == np.float32 and s.box_xyxy.shape == (4,)
        np.testing.assert_array_equal(s.box_xyxy, detections.boxes_xyxy[i])
        assert s.score == pytest.approx(float(detections.scores[i]), abs=1e-7)
        assert s.class_id == int(detections.class_ids[i])
        if embeddings[i] is None:
            assert s.embedding is None
        else:
            assert s.embedding.dtype == np.float32 and s.embedding.shape == (EMBEDDING_DIM,)
            np.testing.assert_allclose(s.embedding, embeddings[i], rtol=0, atol=1e-7)
    assert len({s.detection_id for s in stored}) == 5


def test_repost_replaces_detections_and_keeps_frame_id(repository, database):
    rng = np.random.default_rng(1)
    first, first_emb = make_detections(rng, 4)
    second, second_emb = make_detections(rng, 2)

    id_first = repository.save_frame(frame(), first, first_emb, "file:///a")
    id_second = repository.save_frame(frame(), second, second_emb, "file:///b")

    stored = repository.load_session("ARM001", "sess_1")
    assert id_first == id_second
    assert len(stored) == 2
    np.testing.assert_array_equal(np.stack([s.box_xyxy for s in stored]), second.boxes_xyxy)
    frames = repository.session_frames("ARM001", "sess_1")
    assert [(f["image_name"], f["image_uri"], f["n_detections"]) for f in frames] == [("1200.jpg", "file:///b", 2)]
    assert count(database, "detections") == 2


def test_repost_identical_frame_is_idempotent(repository, database):
    rng = np.random.default_rng(2)
    detections, embeddings = make_detections(rng, 3)
    for _ in range(3):
        repository.save_frame(frame(), detections, embeddings, "file:///a")
    assert (count(database, "frames"), count(database, "detections")) == (1, 3)


def test_frame_without_detections_is_a_known_empty_session(repository):
    repository.save_frame(frame(), Detections.empty(), [], None)
    assert repository.load_session("ARM001", "sess_1") == []
    assert repository.arm_ids_of_session("sess_1") == ["ARM001"]


def test_load_orders_by_pulse_width_then_detection_index(repository):
    rng = np.random.default_rng(3)
    posted = {}
    for name in ["1500.jpg", "1000.jpg", "1250.5.jpg", "950.jpg"]:  # not in pw order
        detections, embeddings = make_detections(rng, 3)
        repository.save_frame(frame(name), detections, embeddings, None)
        posted[name] = detections

    stored = repository.load_session("ARM001", "sess_1")

    assert [s.image_name for s in stored] == ["950.jpg"] * 3 + ["1000.jpg"] * 3 + ["1250.5.jpg"] * 3 + ["1500.jpg"] * 3
    for name, detections in posted.items():
        boxes = np.stack([s.box_xyxy for s in stored if s.image_name == name])
        np.testing.assert_array_equal(boxes, detections.boxes_xyxy)
    again = repository.load_session("ARM001", "sess_1")
    assert [s.detection_id for s in again] == [s.detection_id for s in stored]


def test_unknown_session_raises(repository):
    repository.save_frame(frame(session_id="other"), Detections.empty(), [], None)
    with pytest.raises(UnknownSession, match="sess_1"):
        repository.load_session("ARM001", "sess_1")
    with pytest.raises(UnknownSession, match="sess_1"):
        repository.session_frames("ARM001", "sess_1")
    with pytest.raises(UnknownSession, match="ARM002"):
        repository.load_session("ARM002", "other")
    assert repository.arm_ids_of_session("sess_1") == []


def test_sessions_are_scoped_by_arm(repository):
    rng = np.random.default_rng(4)
    for arm_id, n in [("ARM_B", 2), ("ARM_A", 3)]:
        detections, embeddings = make_detections(rng, n)
        repository.save_frame(frame(arm_id=arm_id), detections, embeddings, None)

    assert repository.arm_ids_of_session("sess_1") == ["ARM_A", "ARM_B"]
    assert len(repository.load_session("ARM_A", "sess_1")) == 3
    assert len(repository.load_session("ARM_B", "sess_1")) == 2
    listed = repository.list_sessions(arm_id="ARM_A")
    assert [(s["arm_id"], s["session_id"], s["n_frames"], s["n_detections"]) for s in listed] == [
        ("ARM_A", "sess_1", 1, 3)
    ]
    assert {s["arm_id"] for s in repository.list_sessions()} == {"ARM_A", "ARM_B"}
    assert len(repository.list_sessions(limit=1)) == 1
    assert len(repository.list_sessions(limit=None)) == 2  # no limit


def test_four_arms_posting_at_once_lose_and_duplicate_nothing(repository, database):
    """4 threads, one per arm, each posts 6 frames twice (the second post replaces the first)."""
    rng = np.random.default_rng(5)
    arms = [f"ARM{i:03d}" for i in range(4)]
    names = [f"{1000 + 50 * k}.jpg" for k in range(6)]
    plan = {(a, n): make_detections(rng, int(rng.integers(1, 6))) for a in arms for n in names}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(arms))

    def post(arm_id: str) -> None:
        try:
            barrier.wait()
            for _ in range(2):
                for name in names:
                    detections, embeddings = plan[(arm_id, name)]
                    repository.save_frame(frame(name, arm_id=arm_id), detections, embeddings, None)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(a,)) for a in arms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    for arm_id in arms:
        stored = repository.load_session(arm_id, "sess_1")
        expected = np.concatenate([plan[(arm_id, n)][0].boxes_xyxy for n in names])
        np.testing.assert_array_equal(np.stack([s.box_xyxy for s in stored]), expected)
    assert count(database, "frames") == len(arms) * len(names)
    assert count(database, "detections") == sum(len(d) for d, _ in plan.values())
    assert repository.arm_ids_of_session("sess_1") == arms


def test_same_frame_posted_concurrently_keeps_exactly_one_post(repository, database):
    """4 threads post the same frame at once, each with a different number of detections."""
    rng = np.random.default_rng(6)
    posts = [make_detections(rng, k + 1) for k in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(posts))

    def post(k: int) -> None:
        try:
            barrier.wait()
            repository.save_frame(frame(), posts[k][0], posts[k][1], f"file:///{k}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(k,)) for k in range(len(posts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    (row,) = repository.session_frames("ARM001", "sess_1")
    winner = int(row["image_uri"].rsplit("/", 1)[1])
    stored = repository.load_session("ARM001", "sess_1")
    np.testing.assert_array_equal(np.stack([s.box_xyxy for s in stored]), posts[winner][0].boxes_xyxy)
    assert count(database, "detections") == len(posts[winner][0])


def test_commands_latest_wins(repository):
    repository.save_frame(frame(), Detections.empty(), [], None)
    assert repository.latest_commands("ARM001", "sess_1") is None
    first = repository.save_commands("ARM001", "sess_1", {"arm_radius": 10}, [[[1, 2], [3, 4]]])
    second = repository.save_commands(
        "ARM001", "sess_1", {"arm_radius": np.float32(12.5)}, {"commands": np.array([[1.5, 2.0]])}
    )

    latest = repository.latest_commands("ARM001", "sess_1")

    assert second > first
    assert latest["command_id"] == second
    assert latest["constants"] == {"arm_radius": 12.5}
    assert latest["result"] == {"commands": [[1.5, 2.0]]}


def test_commands_of_unknown_session_raise(repository):
    with pytest.raises(UnknownSession, match="nope"):
        repository.save_commands("ARM001", "nope", {}, [])


def test_commands_with_nan_are_rejected(repository, database):
    repository.save_frame(frame(), Detections.empty(), [], None)
    with pytest.raises(ValueError, match="(?i)nan|out of range"):
        repository.save_commands("ARM001", "sess_1", {"arm_radius": float("nan")}, [])
    assert count(database, "commands") == 0


def test_delete_session_cascades(repository, database):
    rng = np.random.default_rng(7)
    for name in ["1000.jpg", "1100.jpg"]:
        repository.save_frame(frame(name), *make_detections(rng, 3), None)
    repository.save_frame(frame(session_id="kept"), *make_detections(rng, 2), None)
    repository.save_commands("ARM001", "sess_1", {}, [])

    assert repository.delete_session("ARM001", "sess_1") is True

    assert (count(database, "frames"), count(database, "detections"), count(database, "commands")) == (1, 2, 0)
    assert repository.delete_session("ARM001", "sess_1") is False
    assert len(repository.load_session("ARM001", "kept")) == 2


def test_deleting_a_frame_deletes_its_detections(repository, database):
    rng = np.random.default_rng(8)
    keep_id = repository.save_frame(frame("1000.jpg"), *make_detections(rng, 2), None)
    drop_id = repository.save_frame(frame("1100.jpg"), *make_detections(rng, 3), None)
    with database.pool.connection() as conn:
        conn.execute("DELETE FROM frames WHERE id = %s", (drop_id,))
    assert count(database, "detections") == 2
    assert {s.image_name for s in repository.load_session("ARM001", "sess_1")} == {"1000.jpg"}
    assert keep_id != drop_id


@pytest.mark.parametrize(
    ("arm_id", "session_id"),
    [("", "s"), ("ARM 1", "s"), ("ARM001", "x" * 65), ("ARM001", "s;DROP TABLE frames"), ("ARM/1", "s")],
    ids=["empty-arm", "space", "too-long", "sql", "slash"],
)
def test_malformed_ids_are_bad_requests(repository, database, arm_id, session_id):
    with pytest.raises(BadRequest, match="must be 1 to 64"):
        repository.load_session(arm_id, session_id)
    with pytest.raises(BadRequest, match="must be 1 to 64"):
        repository.save_commands(arm_id, session_id, {}, [])
    assert count(database, "frames") == 0


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        ([None], r"one entry per detection \(2\)"),
        ([None, np.zeros(128, np.float32)], r"shape \(512,\)"),
        ([None, np.full(512, np.nan, np.float32)], "finite"),
    ],
    ids=["too-few", "wrong-dim", "nan"],
)
def test_bad_embeddings_raise_and_store_nothing(repository, database, embeddings, message):
    detections = Detections(np.array([[0, 0, 5, 5], [1, 1, 9, 9]], np.float32), np.array([0.9, 0.8]), np.array([1, 0]))
    with pytest.raises(ValueError, match=message):
        repository.save_frame(frame(), detections, embeddings, None)
    assert count(database, "frames") == 0


def test_ping_and_unreachable_database(database, tmp_path):
    assert database.ping() is True
    with pytest.raises(ServiceUnavailable, match="not reachable"):
        Database(f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=2", timeout_s=2)


def test_pool_connections_carry_pgvector_adapters(database):
    with database.pool.connection() as conn:
        (value,) = conn.execute("SELECT %s::vector(3)", (np.array([1.0, 2.0, 3.5], np.float32),)).fetchone()
    np.testing.assert_array_equal(value.to_numpy(), [1.0, 2.0, 3.5])


def test_repository_survives_a_failed_transaction(repository, database):
    """A failing save rolls back and gives back a usable connection."""
    rng = np.random.default_rng(9)
    detections, embeddings = make_detections(rng, 2)
    with database.pool.connection() as conn:
        conn.execute("ALTER TABLE detections ADD CONSTRAINT no_big_scores CHECK (score < 0.01)")
    with pytest.raises(psycopg.errors.CheckViolation):
        repository.save_frame(frame(), detections, embeddings, None)
    assert count(database, "frames") == 0
    with database.pool.connection() as conn:
        conn.execute("ALTER TABLE detections DROP CONSTRAINT no_big_scores")
    repository.save_frame(frame(), detections, embeddings, None)
    assert len(repository.load_session("ARM001", "sess_1")) == 2


def test_store_benchmark_runs_and_cleans_up(pg_conn, repository):
    from sorterbot_cloud.db.bench import run

    result = run(pg_conn, n_frames=2, n_detections=3, repeats=2)

    assert set(result["medians_ms"]) == {
        "save_frame_new",
        "save_frame_repost",
        "load_session",
        "load_session_text",
        "select_1",
    }
    assert all(v > 0 for v in result["medians_ms"].values())
    assert repository.list_sessions() == []


def test_embeddings_as_one_float64_array_are_stored_as_float32(repository):
    rng = np.random.default_rng(10)
    detections = Detections(np.array([[0, 0, 5, 5], [1, 1, 9, 9]], np.float32), np.array([0.9, 0.8]), np.array([0, 0]))
    embeddings = rng.standard_normal((2, EMBEDDING_DIM))  # float64

    repository.save_frame(frame(), detections, embeddings, None)

    stored = repository.load_session("ARM001", "sess_1")
    for s, e in zip(stored, embeddings, strict=True):
        assert s.embedding.dtype == np.float32
        np.testing.assert_array_equal(s.embedding, e.astype(np.float32))


class _OutageProxy:
    """A TCP port forwarding to the test server's unix socket, that can be cut and restored.

    ``cut()`` closes the listening socket and every forwarded connection (the database
    is gone: connections refused); ``restore()`` listens on the same port again.
    """

    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self.port = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            sockets, self._open = self._open + [self._listener], []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.unix_path)
            with self._lock:
                self._open += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


#: How soon after the database returns the service must be ready again (seconds): the
#: pool's capped reconnect wait plus a probe's timeout and some slack.
READY_AFTER_OUTAGE_S = 4.0


@pytest.mark.slow
def test_readiness_returns_soon_after_a_database_outage(pg_conn):
    """After an outage long enough for psycopg_pool's doubling back-off to reach 8 s, the
    pool reconnects within a few seconds of the database's return (it took up to 30 s)."""
    assert RECONNECT_MAX_DELAY_S + 1.5 <= READY_AFTER_OUTAGE_S
    params = conninfo_to_dict(pg_conn)
    proxy = _OutageProxy(f"{params['host']}/.s.PGSQL.{params.get('port', 5432)}")
    proxy.restore()
    proxied = make_conninfo(pg_conn, host="127.0.0.1", port=str(proxy.port))
    db = Database(proxied, max_size=2, run_migrations=False, timeout_s=5)
    try:
        assert db.ping()
        proxy.cut()
        outage_end = time.monotonic() + 8.0
        while time.monotonic() < outage_end:  # readiness probes during the outage
            assert not db.ping(timeout_s=0.5)
            time.sleep(0.5)
        proxy.restore()
        back = time.monotonic()
        while not db.ping(timeout_s=0.5):
            assert time.monotonic() - back < 30, "the pool never reconnected"
            time.sleep(0.1)
        assert time.monotonic() - back <= READY_AFTER_OUTAGE_S
    finally:
        db.close()
        proxy.cut()
