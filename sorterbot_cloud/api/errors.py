"""JSON error handlers: every error leaves the service as RFC 9457 problem details.

Three handlers, registered once on the application by :func:`register_error_handlers`:

- the project's errors (:class:`~sorterbot_cloud.errors.SorterBotError`): their status,
  title and public ``detail``;
- Werkzeug's :class:`~werkzeug.exceptions.HTTPException` (404, 405, 413, ...): its code,
  name and description (413 states the configured limit);
- anything else: logged with the request id and the traceback, answered as an opaque 500.

Body shape (RFC 9457, section 3.1): ``{"type", "title", "status", "detail", "instance"}``
plus the extension member ``request_id``; media type ``application/problem+json``.
"""

from __future__ import annotations

import logging
import uuid

from flask import Flask, g, has_request_context, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from sorterbot_cloud.errors import SorterBotError

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://sorterbot.cloud/problems/"


def request_id() -> str | None:
    """The current request's id (set by :mod:`sorterbot_cloud.ops` when installed), else a new one."""
    if not has_request_context():
        return None
    try:
        from sorterbot_cloud.ops import current_request_id

        rid = current_request_id()
    except ImportError:
        rid = None
    rid = rid or g.get("request_id")
    if not rid:
        rid = uuid.uuid4().hex
        g.request_id = rid
    return rid


def problem_response(problem: dict, headers: dict | None = None):
    """Build a Flask response from a problem dict (adds ``instance`` and ``request_id``)."""
    from flask import current_app

    body = dict(problem)
    if has_request_context():
        body.setdefault("instance", request.path)
        body.setdefault("request_id", request_id())
    response = current_app.response_class(
        current_app.json.dumps(body), status=int(body["status"]), mimetype=PROBLEM_MEDIA_TYPE
    )
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _slug(name: str) -> str:
    return "-".join(name.lower().replace("'", "").split())


def handle_project_error(error: SorterBotError):
    """Project errors carry their own status and public detail."""
    level = logging.ERROR if error.status >= 500 else logging.INFO
    logger.log(level, "request rejected: %s %s", error.status, error.detail, extra={"status": error.status})
    return problem_response(error.to_problem())


def handle_http_exception(error: HTTPException):
    """Werkzeug's routing and protocol errors (404, 405, 413, ...) as problem details."""
    from flask import current_app

    status = int(error.code or 500)
    detail = error.description or error.name
    if isinstance(error, RequestEntityTooLarge):
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        detail = f"the request body is larger than the limit of {limit} bytes"
    elif status == 405:
        allowed = getattr(error, "valid_methods", None) or []
        detail = f"method {request.method} is not allowed on {request.path}; allowed: {', '.join(sorted(allowed))}"
    elif status == 404:
        detail = f"no route {request.path}; see /openapi.json for the routes"
    problem = {"type": PROBLEM_TYPE_BASE + _slug(error.name or "error"), "title": error.name, "status": status, "detail": detail}
    headers = {}
    if status == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    return problem_response(problem, headers)


def handle_unexpected_error(error: Exception):
    """Anything else: logged with the request id and traceback, answered as an opaque 500."""
    if isinstance(error, HTTPException):  # Flask routes these here when no handler matched
        return handle_http_exception(error)
    rid = request_id()
    logger.error("unhandled error (request id %s)", rid, exc_info=error, extra={"request_id": rid})
    problem = {
        "type": PROBLEM_TYPE_BASE + "internal-error",
        "title": "Internal error",
        "status": 500,
        "detail": f"an internal error occurred; quote request id {rid} when reporting it",
    }
    return problem_response(problem)


def register_error_handlers(app: Flask) -> None:
    """Register the three handlers on ``app`` (call once, from the application factory)."""
    app.register_error_handler(SorterBotError, handle_project_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected_error)
