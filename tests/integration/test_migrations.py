"""Migrations and the embedded server, against a real PostgreSQL (see conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from sorterbot_cloud.config import Settings
from sorterbot_cloud.db import Database, MigrationError, migrate
from sorterbot_cloud.db.migrate import MIGRATIONS_DIR, load_migrations

TABLES = {"arms", "sessions", "frames", "detections", "commands", "schema_migrations"}


def schema_snapshot(conninfo: str) -> list[tuple]:
    """Every column, constraint and index of the public schema."""
    with psycopg.connect(conninfo) as conn:
        columns = conn.execute(
            """SELECT table_name, column_name, data_type, udt_name, is_nullable FROM information_schema.columns
               WHERE table_schema = 'public' ORDER BY 1, 2"""
        ).fetchall()
        constraints = conn.execute(
            """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
               WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"""
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return columns + constraints + indexes


def recorded(conninfo: str) -> list[tuple]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version").fetchall()


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_migrate_builds_the_schema(empty_pg_conn):
    applied = migrate(empty_pg_conn)

    files = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    assert applied == files
    assert [(v, n) for v, n, _ in recorded(empty_pg_conn)] == [(m.version, m.name) for m in load_migrations()]
    with psycopg.connect(empty_pg_conn) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        (embedding_type,) = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'detections'::regclass AND attname = 'embedding'"
        ).fetchone()
        (colour_type,) = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'detections'::regclass AND attname = 'colour_lab'"
        ).fetchone()
        # 0002's CHECK: three values or NULL
        conn.execute("INSERT INTO arms VALUES ('A')")
        conn.execute("INSERT INTO sessions (arm_id, session_id) VALUES ('A', 's')")
        (frame_id,) = conn.execute("INSERT INTO frames (arm_id, session_id, image_name, pw0, width_px, height_px) "
                                   "VALUES ('A', 's', '1200.jpg', 1200, 10, 10) RETURNING id").fetchone()
        insert = ("INSERT INTO detections (frame_id, det_index, class_id, x_min, y_min, x_max, y_max, score, colour_lab) "
                  "VALUES (%s, %s, 0, 0, 0, 1, 1, 0.9, %s)")
        conn.execute(insert, (frame_id, 0, [50.0, 1.0, -2.0]))
        conn.execute(insert, (frame_id, 1, None))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(insert, (frame_id, 2, [50.0, 1.0]))
    assert TABLES <= tables
    assert embedding_type == "vector(512)"
    assert colour_type == "real[]"


def test_migrate_twice_is_a_no_op(empty_pg_conn):
    migrate(empty_pg_conn)
    before = (schema_snapshot(empty_pg_conn), recorded(empty_pg_conn))

    assert migrate(empty_pg_conn) == []

    assert (schema_snapshot(empty_pg_conn), recorded(empty_pg_conn)) == before


def test_replicas_migrating_at_once_apply_each_migration_once(empty_pg_conn):
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait()
            results.append(migrate(empty_pg_conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    files = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    assert sorted(results, key=len) == [[], [], [], files]
    assert len(recorded(empty_pg_conn)) == len(files)


def test_new_migration_is_applied_after_old_ones(empty_pg_conn, tmp_path):
    directory = write_migrations(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (x int);"})
    assert migrate(empty_pg_conn, directory) == ["0001_a.sql"]
    write_migrations(directory, {"0002_b.sql": "ALTER TABLE a ADD COLUMN y int; INSERT INTO a VALUES (1, 2);"})

    assert migrate(empty_pg_conn, directory) == ["0002_b.sql"]

    with psycopg.connect(empty_pg_conn) as conn:
        assert conn.execute("SELECT x, y FROM a").fetchall() == [(1, 2)]


def test_failed_migration_is_rolled_back(empty_pg_conn, tmp_path):
    directory = write_migrations(
        tmp_path / "m",
        {
            "0001_a.sql": "CREATE TABLE a (x int);",
            "0002_bad.sql": "CREATE TABLE b (x int); SELECT no_such_column FROM a;",
        },
    )
    with pytest.raises(psycopg.errors.UndefinedColumn, match="no_such_column"):
        migrate(empty_pg_conn, directory)

    assert [(v, n) for v, n, _ in recorded(empty_pg_conn)] == [(1, "a")]
    with psycopg.connect(empty_pg_conn) as conn:
        assert conn.execute("SELECT to_regclass('b')").fetchone() == (None,)


def test_edited_applied_migration_is_refused(empty_pg_conn, tmp_path):
    directory = write_migrations(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (x int);"})
    migrate(empty_pg_conn, directory)
    write_migrations(directory, {"0001_a.sql": "CREATE TABLE a (x bigint);"})

    with pytest.raises(MigrationError, match="0001_a.sql changed after it was applied"):
        migrate(empty_pg_conn, directory)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_a.sql": "SELECT 1;"}, "must be named NNNN_name.sql"),
        ({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"}, "two migrations have version 0001"),
    ],
    ids=["bad-name", "duplicate-version"],
)
def test_malformed_migration_files_are_refused(empty_pg_conn, tmp_path, files, message):
    directory = write_migrations(tmp_path / "m", files)
    with pytest.raises(MigrationError, match=message):
        migrate(empty_pg_conn, directory)
    with psycopg.connect(empty_pg_conn) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)


def test_database_from_settings_migrates_a_fresh_database(empty_pg_conn, tmp_path):
    settings = Settings.load(environ={}, pg_conn=empty_pg_conn, data_dir=tmp_path, pool_max_size=2)
    with Database.from_settings(settings) as database:
        assert database.applied_migrations == sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
        assert database.ping() is True
        assert database.embedded is None
    with Database.from_settings(settings) as again:
        assert again.applied_migrations == []


def test_embedded_server_is_reused_by_databases_and_processes(pg_server):
    """pg_conn None: Database.from_settings runs on the embedded server of data_dir; when
    one is already running there (the test session's), it is reused, by this process and
    by another one, rather than a second server started."""
    if not hasattr(pg_server, "pg_data_dir"):
        pytest.skip("runs on the embedded server only")
    data_dir = pg_server.pg_data_dir.parent
    postmaster_pid = int((pg_server.pg_data_dir / "postmaster.pid").read_text().split()[0])
    settings = Settings.load(environ={}, pg_conn=None, data_dir=data_dir, pool_max_size=2)
    first = Database.from_settings(settings)
    second = Database.from_settings(settings)
    try:
        assert first.ping() and second.ping()
        assert first.conninfo == second.conninfo == pg_server.conninfo("sorterbot")
        with first.pool.connection() as conn:
            (server_data_dir,) = conn.execute("SHOW data_directory").fetchone()
            (backend_parent,) = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
            ).fetchone()
        assert Path(server_data_dir) == settings.pg_data_dir.resolve()
        assert backend_parent > 0
        code = "import sys; from sorterbot_cloud.db.server import start_embedded; print(start_embedded(sys.argv[1]).server.get_pid())"
        out = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", code, str(settings.pg_data_dir)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),
        )
        assert int(out.stdout.strip().splitlines()[-1]) == postmaster_pid
        # the other process has exited; this process's claim keeps the server running
        assert first.ping() is True
        assert int((pg_server.pg_data_dir / "postmaster.pid").read_text().split()[0]) == postmaster_pid
    finally:
        first.close()
        second.close()
        pg_server.drop_database("sorterbot")


def test_db_cli_migrate_status_and_sessions(empty_pg_conn, tmp_path):
    from click.testing import CliRunner

    from sorterbot_cloud.db import Repository
    from sorterbot_cloud.db.cli import db
    from sorterbot_cloud.structures import Detections, Frame

    env = {"PG_CONN": empty_pg_conn, "DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    before = runner.invoke(db, ["status"], env=env)
    first = runner.invoke(db, ["migrate"], env=env)
    second = runner.invoke(db, ["migrate"], env=env)
    after = runner.invoke(db, ["status"], env=env)

    assert (before.exit_code, first.exit_code, second.exit_code, after.exit_code) == (0, 0, 0, 0)
    assert "0001_init.sql  PENDING" in before.output
    assert first.output.splitlines() == sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    assert second.output.strip() == "schema is current"
    assert "0001_init.sql  applied" in after.output and "ping: ok" in after.output
    with Database(empty_pg_conn) as database:
        Repository(database.pool).save_frame(Frame("ARM9", "s9", "1200.jpg", 64, 48), Detections.empty(), [], None)
    listed = runner.invoke(db, ["sessions", "--arm-id", "ARM9"], env=env)
    assert [(r["arm_id"], r["session_id"], r["n_frames"]) for r in map(json.loads, listed.output.splitlines())] == [
        ("ARM9", "s9", 1)
    ]
