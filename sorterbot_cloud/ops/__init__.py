"""Operations: request ids, structured logs, access control, metrics, log shipping, AWS.

Integration points
------------------
``init_app(app, settings) -> OpsState``
    Call it early in ``create_app`` (before the app registers its own
    ``before_request`` hooks) and keep the returned state (also at
    ``app.extensions["sorterbot_ops"]``). It adds, in this order:

    1. request ids: ``X-Request-ID`` taken from the request when it is a safe token, else
       generated; echoed on every response; on every log record (``request_id``).
    2. structured logs on the root logger: JSON lines when stderr is not a terminal
       (``settings.log_json`` forces either way), one access record per request
       (logger ``sorterbot_cloud.access``: method, route, status, duration_ms, and for a
       session route ``arm_id``, ``session_id`` and ``log_type`` = the view's name, so
       it also reaches the control panel).
    3. bearer-token auth when ``settings.api_token`` is set: every path but ``/healthz``;
       401 ``application/problem+json`` otherwise.
    4. ``GET /metrics`` (Prometheus text format) and per-route request counts and latencies.
    5. control-panel log shipping when ``settings.control_panel_host`` is set: records
       carrying ``arm_id``, ``session_id`` and ``log_type`` are POSTed from a bounded
       background queue (:mod:`.control_panel`).
    6. in the ``aws-dev`` and ``production`` modes: ``state.aws`` (:class:`.aws.AwsContext`)
       and ``state.uploads`` (a started :class:`.aws.UploadQueue` spooling under
       ``settings.data_dir / "upload-spool"``), the process-wide ones of
       :func:`.aws.context_for` / :func:`.aws.upload_queue_for`; both None in ``local`` mode.

Service code (no Flask import)
    - stage times: ``ops.metrics.observe_stage("detect", seconds)`` or
      ``with ops.metrics.stage_timer("detect"): ...``; stages decode, detect, embed,
      store, trigger (and upload, recorded by the upload queue);
    - model load time: ``with ops.metrics.model_load_timer("detector"): ...``;
    - session logs for the control panel: ``log.info(msg, extra={"arm_id": a,
      "session_id": s, "log_type": "process_image", "duration_ms": d})`` or
      ``ops.bind_log_fields(arm_id=a, session_id=s)`` once per request;
    - S3 archive: ``ops.aws.archive_from_settings(settings, disk_archive)`` returns the disk
      archive in local mode and, in the aws modes, an :class:`.aws.S3MirroredArchive` whose
      ``put`` also queues the S3 copy at ``<arm_id>/<session_id>/<image_name>``; a session overview
      PNG goes through ``ops.aws.publish_overview(settings, arm_id, session_id, png)``
      (written under ``settings.overview_dir``, copied to S3 in the aws modes);
    - empty ``/process_image`` body in the aws modes: ``ops.aws.read_frame(settings,
      session_id, image_name) -> bytes`` (raises ``BadRequest`` if the object is missing,
      ``ServiceUnavailable`` if S3 is down);
    - database: ``ops.aws.resolve_pg_conn(settings)`` gives PG_CONN (from SSM in production).
"""

from __future__ import annotations

import atexit
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import Unauthorized
from . import metrics
from .auth import OPEN_PATHS, check_bearer
from .control_panel import ControlPanelHandler, ControlPanelShipper
from .logs import (
    REQUEST_ID_HEADER,
    bind_log_fields,
    configure_logging,
    current_log_fields,
    current_request_id,
    new_request_id,
)

__all__ = [
    "OpsState",
    "init_app",
    "bind_log_fields",
    "current_request_id",
    "current_log_fields",
    "configure_logging",
    "metrics",
]

EXTENSION_KEY = "sorterbot_ops"
access_log = logging.getLogger("sorterbot_cloud.access")


@dataclass
class OpsState:
    """What :func:`init_app` set up for one app.

    Attributes
    ----------
    settings : Settings
    shipper : ControlPanelShipper or None
        Set when ``settings.control_panel_host`` is.
    aws : AwsContext or None
        Set in the aws modes.
    uploads : UploadQueue or None
        Set in the aws modes.
    """

    settings: Any
    shipper: ControlPanelShipper | None = None
    aws: Any = None
    uploads: Any = None
    _handlers: list[logging.Handler] = field(default_factory=list)

    def close(self, timeout_s: float = 5.0) -> None:
        """Detach the control-panel handler and stop its thread.

        The upload queue is shared by the process (:func:`.aws.upload_queue_for`) and keeps
        running; at process exit its pending files stay spooled on disk for the next start.
        """
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
        self._handlers.clear()
        if self.shipper is not None:
            self.shipper.close(timeout_s)


def init_app(app, settings, *, aws=None, uploads=None, configure_logs: bool = True) -> OpsState:
    """Add request ids, structured logs, auth, metrics, log shipping and AWS to ``app``.

    Parameters
    ----------
    app : flask.Flask
    settings : Settings
    aws : AwsContext, optional
        Use this instead of building one from ``settings`` (aws modes only).
    uploads : UploadQueue, optional
        Use this instead of building one (aws modes only).
    configure_logs : bool
        Install the root stream handler (:func:`.logs.configure_logging`).

    Returns
    -------
    OpsState
        Also stored at ``app.extensions["sorterbot_ops"]``.

    Raises
    ------
    ValueError
        In an aws mode without ``DEPLOY_REGION``.
    ServiceUnavailable
        In an aws mode when SSM cannot give the bucket suffix.
    """
    from flask import g, request

    state = OpsState(settings=settings)
    if configure_logs:
        configure_logging(settings.log_json)

    if settings.control_panel_host:
        state.shipper = ControlPanelShipper(settings.control_panel_host)
        handler = ControlPanelHandler(state.shipper)
        logging.getLogger().addHandler(handler)
        state._handlers.append(handler)

    if settings.mode in ("aws-dev", "production"):
        from .aws import context_for, upload_queue_for

        state.aws = aws or context_for(settings)
        state.uploads = uploads or upload_queue_for(settings)

    token = settings.api_token

    @app.before_request
    def _ops_before_request():
        g._sorterbot_start_s = time.perf_counter()
        bind_log_fields(request_id=new_request_id(request.headers.get(REQUEST_ID_HEADER)))
        if token and request.path not in OPEN_PATHS:
            try:
                check_bearer(request.headers.get("Authorization"), token)
            except Unauthorized as exc:
                response = app.response_class(
                    response=_json_dumps(exc.to_problem()), status=exc.status, mimetype="application/problem+json",
                )
                response.headers["WWW-Authenticate"] = 'Bearer realm="sorterbot"'
                return response
        return None

    @app.after_request
    def _ops_after_request(response):
        request_id = current_request_id()
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        start_s = g.get("_sorterbot_start_s")
        if start_s is not None:
            duration_s = time.perf_counter() - start_s
            route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
            metrics.observe_request(request.method, route, response.status_code, duration_s)
            extra = {"method": request.method, "route": route, "status": response.status_code,
                     "duration_ms": round(duration_s * 1000.0, 3)}
            extra.update(_session_fields(request))
            access_log.info("%s %s %d", request.method, request.path, response.status_code, extra=extra)
        return response

    def _metrics_view():
        body, content_type = metrics.render()
        return app.response_class(body, mimetype=None, content_type=content_type)

    app.add_url_rule("/metrics", endpoint="sorterbot_ops_metrics", view_func=_metrics_view, methods=["GET"])
    app.extensions[EXTENSION_KEY] = state
    atexit.register(state.close, 2.0)
    return state


def _session_fields(request) -> dict[str, str]:
    """``arm_id``, ``session_id`` (from the URL or the query, when well formed) and, when
    both are known, ``log_type`` = the view's name: the access record of a session request
    then reaches the control panel with its duration as timing mark."""
    from ..structures import ID_PATTERN

    fields: dict[str, str] = {}
    for name in ("arm_id", "session_id"):
        value = (request.view_args or {}).get(name) or request.args.get(name)
        if isinstance(value, str) and ID_PATTERN.fullmatch(value):
            fields[name] = value
    if len(fields) == 2 and request.endpoint:
        fields["log_type"] = request.endpoint.rsplit(".", 1)[-1]
    return fields


def _json_dumps(obj: Any) -> str:
    import json

    return json.dumps(obj)
