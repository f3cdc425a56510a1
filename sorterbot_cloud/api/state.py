"""Per-application state and request helpers shared by the blueprints.

The application factory stores one :class:`AppState` in
``app.extensions["sorterbot"]``; blueprints reach it through :func:`state`. The body
helpers validate content type, size and emptiness at the boundary, as STYLE.md asks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from sorterbot_cloud.errors import BadRequest, InvalidImage, SorterBotError, UnsupportedMediaType

logger = logging.getLogger(__name__)

EXTENSION_KEY = "sorterbot"

#: Content types accepted for a frame body (docs/design.rst, Wire protocol). ``image/jpg`` is
#: not registered with IANA but is common in the wild; a missing type is accepted because
#: the original client's ``requests.post(url, params=...)`` sends none.
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "application/octet-stream"})

#: Deepest nesting of arrays and objects accepted in a JSON body. Arm constants nest 2
#: levels (the ``camera`` block); deeper bodies are refused before anything walks them.
MAX_JSON_DEPTH = 32


@dataclass
class AppState:
    """What one application instance (one worker process) holds.

    Parameters
    ----------
    settings : Settings
    service : Service
    database : object or None
        The :class:`~sorterbot_cloud.db.Database` the factory opened (None when the
        caller passed its own repository).
    ping : callable or None
        ``ping() -> None`` raising when the database is unreachable (for ``/readyz``).
    s3_reader : callable or None
        ``s3_reader(arm_id, session_id, image_name) -> bytes`` for empty bodies in aws modes.
    closers : list of callables
        Called by :meth:`close`.
    """

    settings: Any
    service: Any
    database: Any = None
    ping: Callable[[], Any] | None = None
    s3_reader: Callable[[str, str, str], bytes] | None = None
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def close(self) -> None:
        """Release what the factory opened (pool, embedded server)."""
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:  # noqa: BLE001 - closing is best effort
                logger.exception("error while closing the application")
        self.closers.clear()


def state() -> AppState:
    """The current application's :class:`AppState`."""
    return current_app.extensions[EXTENSION_KEY]


def read_image_body() -> bytes:
    """Return the raw frame bytes of the current request.

    Raises
    ------
    UnsupportedMediaType
        If the content type is set and is not an image type of :data:`IMAGE_MEDIA_TYPES`.
    werkzeug.exceptions.RequestEntityTooLarge
        If the body is over ``MAX_CONTENT_LENGTH`` (answered as 413).
    """
    mimetype = (request.mimetype or "").lower()
    if mimetype and mimetype not in IMAGE_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"content type {mimetype!r} is not accepted for a frame; send the raw bytes as "
            f"{', '.join(sorted(IMAGE_MEDIA_TYPES - {'image/jpg'}))} (with curl: "
            f"--data-binary @1200.jpg -H 'Content-Type: image/jpeg')"
        )
    return request_body()


def request_body() -> bytes:
    """The raw body of the current request, refused when over ``MAX_CONTENT_LENGTH``.

    Werkzeug refuses a ``Content-Length`` over the limit before reading; a body streamed
    without one (``Transfer-Encoding: chunked``) is read up to the limit and would stop
    there silently, the rest unread. So when such a body fills the limit, one more byte is
    read from the server's stream: if there is one, the body was larger.

    Raises
    ------
    werkzeug.exceptions.RequestEntityTooLarge
        If the body is over the limit (answered as 413 stating the limit).
    """
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(data) >= limit:
        stream = request.environ.get("wsgi.input")
        if stream is not None and stream.read(1):
            raise RequestEntityTooLarge()
    return data


def frame_bytes(arm_id: str, session_id: str, image_name: str) -> bytes:
    """The frame of an ingest request: the body, or in aws modes the S3 object when empty.

    The original HTTP-era client uploaded the frame to S3 and posted no body (docs/design.rst,
    Wire protocol): clients of late April 2020 at ``<arm_id>/<session_id>/<image_name>``,
    earlier ones at ``<session_id>/<image_name>``; the first key that exists is read.

    Raises
    ------
    InvalidImage
        If the body is empty in local mode (or no S3 reader is configured).
    ServiceUnavailable
        If S3 cannot be read.
    """
    data = read_image_body()
    if data:
        return data
    st = state()
    if st.settings.mode == "local":
        raise InvalidImage("the request body is empty: in local mode the encoded frame must be the body")
    if st.s3_reader is None:
        raise InvalidImage("the request body is empty and no S3 reader is configured for this mode")
    try:
        return st.s3_reader(arm_id, session_id, image_name)
    except SorterBotError:
        raise
    except KeyError as exc:
        raise InvalidImage(f"the request body is empty and S3 holds no frame at {session_id}/{image_name}") from exc


def read_json_body() -> Any:
    """Parse the request body as JSON whatever its content type (the original client sends
    ``application/json``; curl users often do not).

    Raises
    ------
    BadRequest
        If the body is empty, not valid UTF-8 JSON, or nests arrays and objects deeper
        than :data:`MAX_JSON_DEPTH` levels.
    werkzeug.exceptions.RequestEntityTooLarge
        If the body is over ``MAX_CONTENT_LENGTH`` (answered as 413).
    """
    raw = request_body()
    if not raw:
        raise BadRequest("the request body is empty: expected a JSON object of arm constants")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:  # the parser recurses once per level of nesting
        raise BadRequest(_too_deep_detail()) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise BadRequest(_too_deep_detail())
    return value


def _too_deep_detail() -> str:
    return (f"the request body nests JSON arrays or objects deeper than {MAX_JSON_DEPTH} levels; "
            "arm constants need 2 (the camera block)")


def json_depth(value: Any) -> int:
    """Levels of nested arrays and objects in a parsed JSON value (0 for a scalar), counted
    without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth = max(depth, level)
        if depth > MAX_JSON_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return depth


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
