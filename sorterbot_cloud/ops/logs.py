"""Structured logs carrying a request id and the arm/session a record is about.

- Every request gets an id: the client's ``X-Request-ID`` header when it is a safe token
  (:data:`REQUEST_ID_PATTERN`), else a fresh UUID4 hex; it is echoed in the response's
  ``X-Request-ID`` header and put on every log record written while the request runs.
- :class:`ContextFilter` copies the request id and the fields bound with
  :func:`bind_log_fields` (``arm_id``, ``session_id``, ...) onto each record.
- :class:`JsonFormatter` writes one JSON object per line; :func:`configure_logging`
  picks it when the stream is not a terminal (or when ``Settings.log_json`` says so).

Service code attaches fields per record with ``extra``::

    log.info("frame stored", extra={"arm_id": a, "session_id": s,
                                    "log_type": "process_image", "duration_ms": 41.2})

or per request with :func:`bind_log_fields`. Records that carry ``arm_id``,
``session_id`` and ``log_type`` are also shipped to the control panel when one is
configured (:mod:`sorterbot_cloud.ops.control_panel`).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
import uuid
from typing import Any, TextIO

#: Accepted client-supplied request ids: 1 to 128 letters, digits, ``_``, ``-``, ``.``, ``:``.
REQUEST_ID_PATTERN = re.compile(r"\A[A-Za-z0-9_.:\-]{1,128}\Z")
REQUEST_ID_HEADER = "X-Request-ID"

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("sorterbot_log_fields", default=None)


def new_request_id(header_value: str | None = None) -> str:
    """Return ``header_value`` if it is a safe request id, else a fresh UUID4 hex (32 chars)."""
    if header_value and REQUEST_ID_PATTERN.fullmatch(header_value):
        return header_value
    return uuid.uuid4().hex


def _flask_fields() -> dict[str, Any] | None:
    try:
        from flask import g, has_request_context
    except ImportError:  # pragma: no cover - flask is a dependency
        return None
    if not has_request_context():
        return None
    fields = g.get("_sorterbot_log_fields")
    if fields is None:
        fields = {}
        g._sorterbot_log_fields = fields
    return fields


def bind_log_fields(**fields: Any) -> None:
    """Attach fields (e.g. ``arm_id``, ``session_id``) to every record logged afterwards
    in this request (inside a Flask request) or in this context (elsewhere)."""
    target = _flask_fields()
    if target is not None:
        target.update(fields)
        return
    current = dict(_fields.get() or {})
    current.update(fields)
    _fields.set(current)


def clear_log_fields() -> None:
    """Forget the fields bound with :func:`bind_log_fields` (outside a request)."""
    _fields.set(None)


def current_log_fields() -> dict[str, Any]:
    """Return the fields bound for the current request or context, request id included."""
    target = _flask_fields()
    if target is not None:
        return dict(target)
    return dict(_fields.get() or {})


def current_request_id() -> str | None:
    """Return the id of the request being served, or None outside a request."""
    return current_log_fields().get("request_id")


class ContextFilter(logging.Filter):
    """Copy the bound fields (request id, arm id, ...) onto each record that lacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in current_log_fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "request_id"):
            record.request_id = None
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the non-standard attributes of ``record`` (from ``extra`` or the filter)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (ISO 8601 UTC), ``level``, ``logger``,
    ``message``, ``request_id``, every ``extra`` field, and ``exc`` with the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            body[key] = _jsonable(value)
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable line for a terminal, with the request id and extra fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in extra_fields(record).items() if v is not None}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(extras.items()))
        return line


_HANDLER_MARK = "_sorterbot_stream_handler"


def configure_logging(log_json: bool | None = None, *, stream: TextIO | None = None, level: int = logging.INFO) -> logging.Handler:
    """Install one stream handler on the root logger (replacing the one installed before).

    Parameters
    ----------
    log_json : bool or None
        JSON lines when True, text when False; None picks JSON unless ``stream`` is a terminal.
    stream : file-like, optional
        Defaults to ``sys.stderr``.
    level : int
        Root logger level.

    Returns
    -------
    logging.Handler
        The installed handler.
    """
    stream = sys.stderr if stream is None else stream
    if log_json is None:
        isatty = getattr(stream, "isatty", None)
        log_json = not (isatty is not None and isatty())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if log_json else TextFormatter())
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    return handler
