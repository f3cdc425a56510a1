"""The HTTP service: application factory and blueprints.

Development: ``sorterbot-cloud serve``. Production (one app, models loaded once per
worker process, after the fork)::

    gunicorn --config python:sorterbot_cloud.ops.gunicorn_conf --workers 1 --threads 4 \\
        --bind 0.0.0.0:5000 'sorterbot_cloud.api:create_app()'

(the config module sets gunicorn's request limits and answers their refusals as problem
details, :mod:`sorterbot_cloud.ops.gunicorn_conf`).

Blueprints: :mod:`~sorterbot_cloud.api.compat` (the original client's routes),
:mod:`~sorterbot_cloud.api.v1` (versioned routes and ``/predict``) and
:mod:`~sorterbot_cloud.api.health` (``/healthz``, ``/readyz``, ``/openapi.json``).
The operator console's pages under ``/ui/`` come from :mod:`sorterbot_cloud.ui`.
Errors leave as RFC 9457 problem details (:mod:`~sorterbot_cloud.api.errors`).
"""

from __future__ import annotations

import dataclasses
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
        Defaults to :func:`sorterbot_cloud.detection.load_detector`.
    embedder : object with ``embed(crops) -> ndarray (N, D)``, optional
        Defaults to :func:`sorterbot_cloud.embedding.load_embedder`.
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
    if repository is None and settings.pg_conn is None and settings.mode == "production":
        aws = _optional_module("sorterbot_cloud.ops.aws")
        if aws is not None:  # PG_CONN from SSM (RDS)
            settings = dataclasses.replace(settings, pg_conn=aws.resolve_pg_conn(settings))
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
        settings.apply_torch_threads()
        if detector is None:
            from sorterbot_cloud.detection import load_detector

            detector = load_detector(settings)
        if embedder is None:
            from sorterbot_cloud.embedding import load_embedder

            embedder = load_embedder(settings)
    except BaseException:
        st.close()
        raise
    st.service = Service(settings, detector=detector, embedder=embedder, repository=repository, archive=archive)
    st.s3_reader = _s3_reader(settings)
    app.extensions[EXTENSION_KEY] = st

    from sorterbot_cloud import ui

    ui.init_app(app, settings)  # the console (/ui/); before ops: it hands the console's token cookie to ops's check
    ops = _optional_module("sorterbot_cloud.ops")
    if ops is not None and hasattr(ops, "init_app"):
        # first, so request ids and auth run before anything of ours (ops's contract)
        ops.init_app(app, settings)
    register_error_handlers(app)
    from sorterbot_cloud.api import admission, compat, health, v1, websocket

    admission.init_app(app, settings)  # after the ops hooks: unauthenticated requests take no slot

    app.register_blueprint(compat.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(v1.predict_bp)
    app.register_blueprint(health.bp)
    websocket.init_app(app)  # the later arm client's WebSocket protocol on /
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
    """The image archive of the mode: disk in local mode; disk mirrored to S3 in the aws
    modes (``ops.aws.archive_from_settings``)."""
    from sorterbot_cloud.storage import DiskArchive

    disk = DiskArchive.from_settings(settings)
    aws = _optional_module("sorterbot_cloud.ops.aws") if settings.mode != "local" else None
    if aws is not None:
        return aws.archive_from_settings(settings, disk)
    return disk


def _s3_reader(settings):
    """``read(arm_id, session_id, image_name) -> bytes`` from the configured bucket in aws
    modes (``<arm_id>/<session_id>/<image_name>``, else ``<session_id>/<image_name>``)."""
    if settings.mode == "local":
        return None
    aws = _optional_module("sorterbot_cloud.ops.aws")
    if aws is None:
        return None
    return lambda arm_id, session_id, image_name: aws.read_frame(settings, session_id, image_name, arm_id)
