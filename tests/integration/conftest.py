"""Fixtures for integration tests: a real embedded PostgreSQL, a fresh database per test.

Fixtures (use them by name in any test under ``tests/integration/``):

- ``pg_server`` (session): the embedded PostgreSQL 18 + pgvector server
  (:class:`sorterbot_cloud.db.EmbeddedPostgres`), started once per test session in a
  temporary ``<data_dir>/pgdata`` (``/tmp/sorterbot-test-pg-*``), stopped and removed at
  the end of the session.
- ``migrated_template`` (session): name of a database built by the production migrations
  (``sorterbot_cloud/db/migrations``); each test's database is a copy of it.
- ``pg_conn`` (function): libpq URI of a fresh, migrated database of its own, dropped
  after the test.
- ``empty_pg_conn`` (function): URI of a fresh, EMPTY database (no migrations applied),
  for migration tests.
- ``make_settings`` (function): ``make_settings(**overrides) -> Settings`` with
  ``pg_conn`` set to the test's database, ``data_dir`` a temporary folder, the
  environment ignored.
- ``settings`` (function): ``make_settings()``.
- ``database`` (function): :class:`sorterbot_cloud.db.Database` on ``settings``, closed
  after the test.
- ``repository`` (function): :class:`sorterbot_cloud.db.Repository` on that database.
- ``archive`` (function): :class:`sorterbot_cloud.storage.DiskArchive` under
  ``settings.image_dir``.

Every test under ``tests/integration/`` is marked ``integration``.

Set ``SORTERBOT_TEST_PG_CONN`` to a libpq URI of a server where the user may create
databases to run these tests against that server instead of the embedded one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sorterbot_cloud.config import Settings
from sorterbot_cloud.db import Database, Repository, migrate
from sorterbot_cloud.db.server import start_embedded
from sorterbot_cloud.storage import DiskArchive

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


class _ExternalServer:
    """The same interface as EmbeddedPostgres, on a server named by a URI."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo

    def conninfo(self, database: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(self._conninfo, dbname=database)

    def ensure_database(self, database: str, *, template: str | None = None) -> str:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
        if template is not None:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(database), sql.Identifier(template))
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute(query)
        return self.conninfo(database)

    def drop_database(self, database: str) -> None:
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))

    def release(self) -> None:
        pass


@pytest.fixture(scope="session")
def pg_server():
    """The PostgreSQL server of this test session (embedded unless SORTERBOT_TEST_PG_CONN is set)."""
    external = os.environ.get("SORTERBOT_TEST_PG_CONN")
    if external:
        yield _ExternalServer(external)
        return
    # Not under pytest's basetemp: every pytest run (ours or a neighbour's) chmods
    # /tmp/pytest-of-<user> to 0700, which would lock the server's own user ('pgserver'
    # when run as root) out of its data directory. The layout is <data_dir>/pgdata, as in
    # Settings.pg_data_dir, so a test can point Settings(pg_conn=None, data_dir=...) here.
    data_dir = Path(tempfile.mkdtemp(prefix="sorterbot-test-pg-"))
    server = start_embedded(data_dir / "pgdata", cleanup_mode="stop")
    # A throw-away server: skip the disk flushes that make CREATE/DROP DATABASE (each
    # forces a checkpoint) slow. Never do this to a server whose data matters.
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
        conn.execute("SELECT pg_reload_conf()")
    yield server
    server.release()
    shutil.rmtree(data_dir, ignore_errors=True)


def _unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def migrated_template(pg_server):
    """A database built by the production migrations, copied for each test."""
    name = _unique_name("sorterbot_template")
    conninfo = pg_server.ensure_database(name)
    migrate(conninfo)
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def pg_conn(pg_server, migrated_template):
    """URI of a fresh migrated database for this test (dropped afterwards)."""
    name = _unique_name("test")
    conninfo = pg_server.ensure_database(name, template=migrated_template)
    yield conninfo
    pg_server.drop_database(name)


@pytest.fixture
def empty_pg_conn(pg_server):
    """URI of a fresh database with no migration applied (dropped afterwards)."""
    name = _unique_name("empty")
    conninfo = pg_server.ensure_database(name)
    yield conninfo
    pg_server.drop_database(name)


@pytest.fixture
def make_settings(pg_conn, tmp_path):
    """``make_settings(**overrides) -> Settings`` on this test's database and a temporary data_dir."""

    def make(**overrides) -> Settings:
        values = {"pg_conn": pg_conn, "data_dir": tmp_path / "data", "pool_max_size": 4}
        values.update(overrides)
        return Settings.load(environ={}, **values)

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    """Settings on this test's database (``pg_conn``) and a temporary ``data_dir``."""
    return make_settings()


@pytest.fixture
def database(settings):
    """A :class:`Database` on this test's database, closed after the test."""
    db = Database.from_settings(settings)
    yield db
    db.close()


@pytest.fixture
def repository(database) -> Repository:
    """A :class:`Repository` on this test's database."""
    return Repository(database.pool)


@pytest.fixture
def archive(settings) -> DiskArchive:
    """A :class:`DiskArchive` under ``settings.image_dir``."""
    return DiskArchive.from_settings(settings)
