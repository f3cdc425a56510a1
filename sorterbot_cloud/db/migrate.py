"""Versioned SQL migrations: ``db/migrations/NNNN_name.sql`` applied in order, once each.

Each file runs in its own transaction together with the row that records it in
``schema_migrations`` (version, name, SHA-256 of the file, time), so a failed migration
leaves nothing behind. The whole run holds a session-level PostgreSQL advisory lock, so
replicas starting at once apply each migration exactly once: the others wait, then find
it recorded. A recorded migration whose file has changed since is an error (as in Flyway's
``validate``): add a new file instead of editing an applied one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import psycopg

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
FILE_PATTERN = re.compile(r"\A(?P<version>[0-9]{4})_(?P<name>[a-z0-9_]+)\.sql\Z")
#: Advisory lock key (a signed 64-bit integer): CRC-32 of this text. Any fixed number
#: works as long as nothing else in the database takes the same one.
LOCK_KEY = zlib.crc32(b"sorterbot_cloud.db.migrate")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration file is malformed, duplicated, or was changed after being applied."""


@dataclass(frozen=True)
class Migration:
    """One migration file.

    Parameters
    ----------
    version : int
        The ``NNNN`` prefix.
    name : str
        The rest of the file name, without ``.sql``.
    sql : str
        The file's text (may hold several statements).
    """

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 hex digest of the file's text."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def load_migrations(directory: str | Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read the migration files of ``directory``, ordered by version.

    Raises
    ------
    MigrationError
        On a ``.sql`` file not named ``NNNN_name.sql`` or two files of the same version.
    """
    migrations: dict[int, Migration] = {}
    for path in sorted(Path(directory).glob("*.sql")):
        match = FILE_PATTERN.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"migration file must be named NNNN_name.sql, got {path.name!r}")
        version = int(match.group("version"))
        if version in migrations:
            raise MigrationError(f"two migrations have version {version:04d}: {path.name}")
        migrations[version] = Migration(version, match.group("name"), path.read_text(encoding="utf-8"))
    return [migrations[v] for v in sorted(migrations)]


def applied_migrations(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    """Return ``{version: (name, checksum)}`` of the migrations recorded in ``conn``'s database."""
    exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
    if exists is None:
        return {}
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version").fetchall()
    return {int(v): (n, c) for v, n, c in rows}


def migrate(conninfo: str, directory: str | Path = MIGRATIONS_DIR, *, lock_timeout_s: float = 120.0) -> list[str]:
    """Apply the migrations of ``directory`` that ``conninfo``'s database lacks.

    Parameters
    ----------
    conninfo : str
        libpq connection string or URI.
    directory : path
        Folder of ``NNNN_name.sql`` files (the package's own by default).
    lock_timeout_s : float
        How long to wait for another process's migration run (seconds).

    Returns
    -------
    list of str
        File names applied by this call, in order (empty when the schema was current).

    Raises
    ------
    MigrationError
        If an applied migration's file changed, or a file is malformed.
    psycopg.Error
        If a migration's SQL fails (its transaction is rolled back) or the lock wait
        times out.
    """
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"SET lock_timeout = {int(lock_timeout_s * 1000)}")  # an int, not input
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(_CREATE_TABLE)
            done = applied_migrations(conn)
            for migration in migrations:
                file_name = f"{migration.version:04d}_{migration.name}.sql"
                if migration.version in done:
                    if done[migration.version][1] != migration.checksum:
                        raise MigrationError(
                            f"migration {file_name} changed after it was applied "
                            f"(recorded checksum {done[migration.version][1][:12]}, file {migration.checksum[:12]}); "
                            "add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                logger.info("applied migration %s", file_name)
                applied_now.append(file_name)
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            except psycopg.OperationalError:  # connection lost: the server released the lock
                pass
    return applied_now
