"""The service's PostgreSQL database: connection pool, migrations, health check.

A :class:`Database` owns a :class:`psycopg_pool.ConnectionPool` (psycopg 3). Each unit of
work borrows a connection with ``with db.pool.connection() as conn:`` (committed on a clean
exit, rolled back on an exception). Every pooled connection has pgvector's psycopg
adapters registered (:func:`pgvector.psycopg.register_vector`), so ``numpy`` float arrays
travel as ``vector`` values and come back as :class:`pgvector.Vector`.

Create a Database per process: a pool must not cross ``fork()`` (gunicorn workers build
their own, after the fork).
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool.pool import AddConnection

from sorterbot_cloud.db.migrate import MIGRATIONS_DIR, migrate
from sorterbot_cloud.db.server import DEFAULT_DATABASE, EmbeddedPostgres, start_embedded
from sorterbot_cloud.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

#: Longest wait between two reconnection attempts of the pool, in seconds. psycopg_pool
#: (3.3) doubles its wait after each failed attempt (1, 2, 4, 8, 16 s ...) and has no
#: option to cap it, so after an outage of half a minute the database could be back for
#: 16 s before the pool (and ``/readyz``) noticed.
RECONNECT_MAX_DELAY_S = 2.0


class _CappedBackoffPool(ConnectionPool):
    """A :class:`psycopg_pool.ConnectionPool` whose reconnection attempts wait at most
    ``reconnect_max_delay_s`` seconds between them (every other timing unchanged).

    Attempts still give up after the pool's ``reconnect_timeout`` (300 s by default); a
    request for a connection then starts a new one.
    """

    def __init__(self, *args, reconnect_max_delay_s: float = RECONNECT_MAX_DELAY_S, **kwargs) -> None:
        if not reconnect_max_delay_s > 0:
            raise ValueError(f"reconnect_max_delay_s must be positive, got {reconnect_max_delay_s!r}")
        self.reconnect_max_delay_s = float(reconnect_max_delay_s)
        super().__init__(*args, **kwargs)

    def schedule_task(self, task, delay: float) -> None:
        if isinstance(task, AddConnection):
            delay = min(delay, self.reconnect_max_delay_s)
        super().schedule_task(task, delay)


class Database:
    """A migrated PostgreSQL database and a pool of connections to it.

    Parameters
    ----------
    conninfo : str
        libpq connection string or URI.
    min_size, max_size : int
        Pool bounds (connections).
    timeout_s : float
        How long a caller waits for a free connection, and how long opening waits for the
        first one (seconds).
    run_migrations : bool
        Apply pending migrations before opening the pool.
    migrations_dir : path
        Folder of ``NNNN_name.sql`` files.
    embedded : EmbeddedPostgres, optional
        The embedded server this database lives on, kept for :attr:`embedded`.
    reconnect_max_delay_s : float
        Longest wait between two attempts to reconnect after the database went away
        (seconds; :data:`RECONNECT_MAX_DELAY_S`), so readiness returns within about that
        long after the database does.

    Raises
    ------
    ServiceUnavailable
        If the database cannot be reached.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout_s: float = 10.0,
        run_migrations: bool = True,
        migrations_dir: str | Path = MIGRATIONS_DIR,
        embedded: EmbeddedPostgres | None = None,
        reconnect_max_delay_s: float = RECONNECT_MAX_DELAY_S,
    ) -> None:
        self.conninfo = conninfo
        self.embedded = embedded
        try:
            self.applied_migrations = migrate(conninfo, migrations_dir) if run_migrations else []
        except psycopg.OperationalError as exc:
            logger.error("database not reachable: %s", _first_line(exc))
            raise ServiceUnavailable("database not reachable") from exc
        self.pool = _CappedBackoffPool(
            conninfo,
            reconnect_max_delay_s=reconnect_max_delay_s,
            min_size=min(min_size, max_size),
            max_size=max_size,
            timeout=timeout_s,
            configure=_configure,
            check=ConnectionPool.check_connection,
            name="sorterbot",
            open=False,
        )
        try:
            self.pool.open(wait=True, timeout=timeout_s)
        except PoolTimeout as exc:
            self.pool.close()
            raise ServiceUnavailable(f"database not reachable within {timeout_s:g} s") from exc

    @classmethod
    def from_settings(cls, settings, *, run_migrations: bool = True) -> "Database":
        """Connect to ``settings.pg_conn``, or start the embedded server when it is None.

        The embedded server runs under ``settings.pg_data_dir`` (reusing one already
        running there) and the service uses its database ``sorterbot``.

        Parameters
        ----------
        settings : sorterbot_cloud.config.Settings
        run_migrations : bool
            Apply pending migrations first (default).

        Raises
        ------
        ServiceUnavailable
            If the server cannot be started or reached.
        """
        embedded = None
        conninfo = settings.pg_conn
        if conninfo is None:
            embedded = start_embedded(settings.pg_data_dir)
            try:
                conninfo = embedded.ensure_database(DEFAULT_DATABASE)
            except psycopg.OperationalError as exc:
                logger.error("embedded database not reachable: %s", _first_line(exc))
                raise ServiceUnavailable("embedded database not reachable") from exc
        return cls(conninfo, max_size=settings.pool_max_size, run_migrations=run_migrations, embedded=embedded)

    def ping(self, timeout_s: float = 2.0) -> bool:
        """Return True when a pooled connection answers ``SELECT 1`` within ``timeout_s``."""
        try:
            with self.pool.connection(timeout=timeout_s) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except (psycopg.Error, PoolTimeout) as exc:
            logger.warning("database ping failed: %s", _first_line(exc))
            return False

    def close(self) -> None:
        """Close the pool (the embedded server stops when its last user process exits)."""
        self.pool.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _configure(conn: psycopg.Connection) -> None:
    """Register pgvector's adapters on a new pooled connection (skipped, with a warning,
    while the database lacks the extension: before the first migration)."""
    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        conn.rollback()
        logger.warning("the vector extension is not installed yet: embeddings cannot be read or written")
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
