"""The store: PostgreSQL (embedded or ``PG_CONN``), migrations and the repository.

- :class:`Database` (``Database.from_settings(settings)``): pool, migrations, ``ping``.
- :class:`Repository` (``Repository(database.pool)``): all SQL of the service.
- :func:`migrate`: apply ``db/migrations/NNNN_name.sql`` under an advisory lock.
- :func:`start_embedded`: the embedded PostgreSQL 18 + pgvector server.
"""

from sorterbot_cloud.db.database import Database
from sorterbot_cloud.db.migrate import MigrationError, migrate
from sorterbot_cloud.db.repository import EMBEDDING_DIM, Repository
from sorterbot_cloud.db.server import EmbeddedPostgres, start_embedded

__all__ = [
    "Database",
    "EMBEDDING_DIM",
    "EmbeddedPostgres",
    "MigrationError",
    "Repository",
    "migrate",
    "start_embedded",
]
