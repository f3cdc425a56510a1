"""The HTTP service: application factory and blueprints.

Development: ``sorterbot-cloud serve``. Production (one app, models loaded once per
worker process, after the fork)::

    gunicorn --workers 1 --threads 4 --bind 0.0.0.0:5000 'sorterbot_cloud.api:create_app()'

Blueprints: :mod:`~sorterbot_cloud.api.compat` (the original client's two routes),
:mod:`~sorterbot_cloud.api.v1` (versioned routes and ``/predict``) and
:mod:`~sorterbot_cloud.api.health` (``/healthz``, ``/readyz``, ``/openapi.json``).
Errors leave as RFC 9457 problem details (:mod:`~sorterbot_cloud.api.errors`).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from flask import Flask

from sorterbot_cloud.api.errors import register_error_handlers
from sorterbot_cloud.api.state import EXTENSION_KEY, AppState, state

logger = logging.getLogger(__name__)

__all__ = ["create_app", "state", "AppState"]


def create_app(
    settings=None,
    *,
    detector=None,
    embedder=None,
    repository=None,
    archive=None,
) -> Flask:
    """Build the Flask application.

    Builds only what it is not given: settings from the environment and config file,
    the detector and embedder from their weight files (once, here), the database
    (embedded PostgreSQL when ``PG_CONN`` is unset, migrations applied) and its
    repository, and the image archive.

    Parameters
    ----------
    settings : Settings, optional
        Defaults to :meth:`Settings.load() <sorterbot_cloud.config.Settings.load>`.
    detector : object with ``detect(image) -> Detections``, optional
        Defaults to :func:`locator.load_detector`.
    embedder : object with ``embed(crops) -> ndarray (N, D)``, optional
        Defaults to :func:`vectorizer.load_embedder`.
    repository : sorterbot_cloud.db.Repository, optional
        Defaults to a repository on :meth:`Database.from_settings`.
    archive : object with ``put`` and ``get``, optional
        Defaults to the archive of the mode (disk in local mode).

    Returns
    -------
    flask.Flask
        State in ``app.extensions["sorterbot"]`` (:class:`AppState`).

    Raises
    ------
    ServiceUnavailable
        If the database cannot be started or reached.
    FileNotFoundError
        If a model's weights are missing.
    """
    from sorterbot_cloud.config import Settings
    from sorterbot_cloud.service import Service

    settings = settings if settings is not None else Settings.load()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_body_bytes)
    app.json.sort_keys = False
    app.json.compact = True
    st = AppState(settings=settings, service=None)
    try:
        if repository is None:
            from sorterbot_cloud.db import Database, Repository

            database = Database.from_settings(settings)
            st.database = database
            st.closers.append(database.close)
            st.ping = database.ping
            repository = Repository(database.pool)
        else:
            st.ping = _ping_of(repository)
        if archive is None:
            archive = _default_archive(settings)
        if detector is None:
            from locator import load_detector

            detector = load_detector(settings)
        if embedder is None:
            from vectorizer import load_embedder

            embedder = load_embedder(settings)
    except BaseException:
        st.close()
        raise
    st.service = Service(settings, detector=detector, embedder=embedder, repository=repository, archive=archive)
    st.s3_reader = _s3_reader(settings)
    app.extensions[EXTENSION_KEY] = st

    register_error_handlers(app)
    from sorterbot_cloud.api import compat, health, v1

    app.register_blueprint(compat.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(v1.predict_bp)
    app.register_blueprint(health.bp)
    ops = _optional_module("sorterbot_cloud.ops")
    if ops is not None and hasattr(ops, "init_app"):
        ops.init_app(app, settings)
    return app


def _optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            return None
        raise


def _ping_of(repository: Any):
    """A ``ping() -> bool`` for a repository the caller built (None: nothing to check)."""
    ping = getattr(repository, "ping", None)
    if callable(ping):
        return ping
    pool = getattr(repository, "pool", None)
    if pool is None:
        return None

    def ping_pool() -> bool:
        with pool.connection(timeout=2.0) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    return ping_pool


def _default_archive(settings):
    """The image archive of the mode: ``storage.archive_from_settings`` when offered, else disk."""
    storage = importlib.import_module("sorterbot_cloud.storage")
    factory = getattr(storage, "archive_from_settings", None)
    if callable(factory):
        return factory(settings)
    return storage.DiskArchive(settings.image_dir)


def _s3_reader(settings):
    """``read(session_id, image_name) -> bytes`` from the configured bucket in aws modes."""
    if settings.mode == "local":
        return None
    aws = _optional_module("sorterbot_cloud.ops.aws")
    if aws is None:
        return None
    for name in ("read_frame", "read_frame_from_s3", "get_frame"):
        reader = getattr(aws, name, None)
        if callable(reader):
            return lambda session_id, image_name: reader(settings, session_id, image_name)
    return None
