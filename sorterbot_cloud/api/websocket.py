"""The WebSocket protocol of the later SorterBot arm client, on ``ws://host:port/``.

The client (``sorterbot_raspberry``, ``arm_commands.py``, websocket-client) opens a
connection per exchange and waits for one reply to each message:

- a frame: ONE binary message ``JSON header + b"___SPLIT___" + encoded image``, header
  ``{"command": "recv_img_proc" | "recv_img_after", "arm_id", "session_id",
  "image_name"}``. ``recv_img_proc`` ingests the frame exactly as ``POST /process_image``
  (:meth:`Service.process_frame <sorterbot_cloud.service.Service.process_frame>`, through
  the same bounded line of :mod:`~sorterbot_cloud.api.admission`: ``503`` when busy);
  ``recv_img_after``, a frame taken after sorting, is checked like a frame and kept under
  ``DATA_DIR/after_images/<arm_id>/<session_id>/<image_name>`` (in the aws modes also
  copied to S3 at ``<arm_id>/<session_id>/after_<image_name>``, the original service's
  key); it has no detections and no part in the session's commands. Both answer the text
  ``true``, as the original service did;
- the session trigger: the TEXT message ``{"command": "get_commands_of_session",
  "session_id", "arm_constants": {...}[, "arm_id"]}``, answered by the JSON list of
  commands of ``POST /get_commands_of_session``;
- ``{"command": "get_status"}`` (the client's connection check), answered by
  ``{"status": 1}`` when the service is ready (the checks of ``/readyz``), else
  ``{"status": 0, "not_ready": [...]}``.

A refused message is answered by one text message, the RFC 9457 problem body the HTTP
route would give (``type``, ``title``, ``status``, ``detail``, ``instance`` ``"/"``,
``request_id``) plus ``command`` when the message named one; the connection stays open
and nothing stored changes. A message longer than :func:`max_message_bytes` is not read:
the connection is closed with code 1009 (RFC 6455, section 7.4.1: message too big). A
connection without a message for :data:`IDLE_TIMEOUT_S` seconds is closed with code
1000 and a reason saying so.

The handshake is an ordinary request to ``/``: the bearer token is checked before the
upgrade when ``API_TOKEN`` is set (:mod:`sorterbot_cloud.ops.auth`; 401 problem, no
upgrade). ``/`` without ``Upgrade: websocket`` answers 404 as before.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import current_app
from flask_sock import Sock
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import WebsocketMismatch

from sorterbot_cloud.api import admission
from sorterbot_cloud.api.compat import resolve_arm_id
from sorterbot_cloud.api.errors import PROBLEM_TYPE_BASE, handle_http_exception, problem_response, request_id
from sorterbot_cloud.api.health import readiness_checks
from sorterbot_cloud.api.state import MAX_JSON_DEPTH, json_depth, state
from sorterbot_cloud.camera import ArmConstants
from sorterbot_cloud.errors import BadRequest, InvalidImage, SorterBotError
from sorterbot_cloud.ids import validate_id, validate_image_name
from sorterbot_cloud.imaging import MAX_ASPECT_RATIO, decode_image
from sorterbot_cloud.storage import DiskArchive

logger = logging.getLogger(__name__)

#: The path the client connects to (``ws://host:port``, no path, is ``/``).
WS_PATH = "/"
#: Separates a frame message's JSON header from its image bytes.
SPLIT_MARKER = b"___SPLIT___"
#: Longest JSON header of a frame message (bytes); the original client's is under 200.
MAX_HEADER_BYTES = 16 * 1024
#: Seconds a connection may stay without a message before the service closes it (the
#: app's ``config["WS_IDLE_TIMEOUT_S"]`` overrides it).
IDLE_TIMEOUT_S = 60.0
#: Bytes read from the socket at a time.
RECEIVE_BYTES = 64 * 1024
#: Folder under ``DATA_DIR`` of the frames taken after sorting.
AFTER_DIR_NAME = "after_images"

FRAME_COMMANDS = ("recv_img_proc", "recv_img_after")
TEXT_COMMANDS = ("get_commands_of_session", "get_status")
#: Close code of a connection closed for lack of messages (RFC 6455, 7.4.1: normal closure).
CLOSE_NORMAL = 1000


def max_message_bytes(max_body_bytes: int) -> int:
    """Longest message read: a frame of ``max_body_bytes`` (``MAX_BODY_BYTES``, the HTTP
    body limit) with its marker and a header of :data:`MAX_HEADER_BYTES`."""
    return int(max_body_bytes) + len(SPLIT_MARKER) + MAX_HEADER_BYTES


def init_app(app) -> Sock:
    """Serve the WebSocket protocol on ``/`` of ``app`` (call from the application factory).

    Also registers the answers of ``/`` to plain HTTP: 404 problem, as for any path
    without a route (Werkzeug would answer 400 or 405 for a WebSocket-only rule).

    Returns
    -------
    flask_sock.Sock
    """
    settings = app.extensions["sorterbot"].settings
    app.config.setdefault("SOCK_SERVER_OPTIONS", {
        "max_message_size": max_message_bytes(settings.max_body_bytes),
        "receive_bytes": RECEIVE_BYTES,
    })
    sock = Sock(app)
    sock.route(WS_PATH, endpoint="websocket")(arm_connection)
    app.register_error_handler(WebsocketMismatch, _websocket_mismatch)
    app.register_error_handler(MethodNotAllowed, _method_not_allowed)
    return sock


def arm_connection(ws) -> None:
    """Answer each message of one connection until the client closes it or stays idle.

    Parameters
    ----------
    ws : simple_websocket.Server
    """
    idle_timeout_s = float(current_app.config.get("WS_IDLE_TIMEOUT_S", IDLE_TIMEOUT_S))
    while True:
        message = ws.receive(timeout=idle_timeout_s)
        if message is None:
            ws.close(reason=CLOSE_NORMAL, message=f"no message for {idle_timeout_s:g} s")
            return
        ws.send(json.dumps(answer(message)))


def answer(message: bytes | str) -> Any:
    """The reply to one message (a JSON-serialisable value); errors become problem bodies.

    Parameters
    ----------
    message : bytes or str
        A binary (frame) or text (command) message.
    """
    command = None
    try:
        if isinstance(message, (bytes, bytearray)):
            header, image = split_frame_message(bytes(message))
            command = header.get("command")
            if command == "recv_img_proc":
                return _recv_img_proc(header, image)
            if command == "recv_img_after":
                return _recv_img_after(header, image)
            raise BadRequest(_unknown_command(command, "a binary message", FRAME_COMMANDS)
                             + ("; commands go in text messages" if command in TEXT_COMMANDS else ""))
        payload = parse_text_message(message)
        command = payload.get("command")
        if command == "get_commands_of_session":
            return _get_commands_of_session(payload)
        if command == "get_status":
            checks = readiness_checks(state())
            if all(checks.values()):
                return {"status": 1}
            return {"status": 0, "not_ready": sorted(name for name, ok in checks.items() if not ok)}
        raise BadRequest(_unknown_command(command, "a text message", TEXT_COMMANDS)
                         + ("; frames go in binary messages" if command in FRAME_COMMANDS else ""))
    except SorterBotError as exc:
        level = logging.ERROR if exc.status >= 500 else logging.INFO
        logger.log(level, "websocket message refused: %s %s", exc.status, exc.detail,
                   extra={"status": exc.status, "command": command})
        return _problem(exc.to_problem(), command)
    except Exception as exc:  # noqa: BLE001 - answered as an opaque 500, the connection stays usable
        rid = request_id()
        logger.error("unhandled error in a websocket message (request id %s)", rid, exc_info=exc,
                     extra={"request_id": rid})
        return _problem({"type": PROBLEM_TYPE_BASE + "internal-error", "title": "Internal error", "status": 500,
                         "detail": f"an internal error occurred; quote request id {rid} when reporting it"}, command)


def split_frame_message(message: bytes) -> tuple[dict, bytes]:
    """Split a frame message into its JSON header and its image bytes.

    Parameters
    ----------
    message : bytes
        ``JSON header + b"___SPLIT___" + image`` (the first marker splits).

    Returns
    -------
    header : dict
    image : bytes

    Raises
    ------
    BadRequest
        If the marker is missing, the header is longer than :data:`MAX_HEADER_BYTES`,
        not UTF-8 JSON, or not an object.
    PayloadTooLarge
        If the image is longer than ``MAX_BODY_BYTES`` (as an HTTP body would be).
    """
    head, marker, image = message.partition(SPLIT_MARKER)
    if not marker:
        raise BadRequest("a binary message must be a JSON header, b'___SPLIT___' and the image bytes; "
                         "no b'___SPLIT___' marker found")
    if len(head) > MAX_HEADER_BYTES:
        raise BadRequest(f"the frame header is {len(head)} bytes, more than the limit of {MAX_HEADER_BYTES}")
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the frame header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BadRequest(f"the frame header must be a JSON object, got {type(header).__name__}")
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and len(image) > limit:
        raise _TooLarge(f"the frame's image is larger than the limit of {limit} bytes")
    return header, image


def parse_text_message(message: str) -> dict:
    """Parse a command message: a JSON object nesting at most ``MAX_JSON_DEPTH`` levels.

    Raises
    ------
    BadRequest
        If the message is not JSON, not an object, or nests too deep.
    PayloadTooLarge
        If it is longer than ``MAX_BODY_BYTES`` (as an HTTP body would be).
    """
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and len(message.encode("utf-8")) > limit:
        raise _TooLarge(f"the message is larger than the limit of {limit} bytes")
    try:
        payload = json.loads(message, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest(f"the message nests JSON arrays or objects deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise BadRequest(f"the message is not valid JSON: {exc}") from None
    if json_depth(payload) > MAX_JSON_DEPTH:
        raise BadRequest(f"the message nests JSON arrays or objects deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(payload, dict):
        raise BadRequest(f"a text message must be a JSON object with a 'command', got {type(payload).__name__}")
    return payload


def after_archive(settings) -> DiskArchive:
    """The archive of the frames taken after sorting: ``DATA_DIR/after_images``."""
    return DiskArchive(settings.data_dir / AFTER_DIR_NAME)


def after_s3_key(arm_id: str, session_id: str, image_name: str) -> str:
    """S3 key of a frame taken after sorting (the original service's): ``<arm_id>/<session_id>/after_<image_name>``."""
    return f"{arm_id}/{session_id}/after_{image_name}"


# --------------------------------------------------------------------------- commands
def _frame_ids(header: dict) -> tuple[str, str, str]:
    return (validate_id("arm_id", header.get("arm_id")), validate_id("session_id", header.get("session_id")),
            validate_image_name(header.get("image_name")))


def _recv_img_proc(header: dict, image: bytes) -> Any:
    arm_id, session_id, image_name = _frame_ids(header)
    if not image:
        raise InvalidImage("the frame message's image part is empty: send the encoded frame after b'___SPLIT___'")
    control = current_app.extensions.get(admission.EXTENSION_KEY)
    if control is None:
        state().service.process_frame(arm_id, session_id, image_name, image)
        return True
    # the bounded line of POST /process_image: a frame waits there, or is refused (503)
    refusal = control.acquire()
    if refusal is not None:
        logger.info("websocket frame refused: server busy (%s)", refusal.reason,
                    extra={"arm_id": arm_id, "session_id": session_id, "status": 503})
        return _problem(admission.refusal_response(refusal, control).get_json(force=True), "recv_img_proc")
    admitted_s = time.perf_counter()
    try:
        state().service.process_frame(arm_id, session_id, image_name, image)
    finally:
        control.release(time.perf_counter() - admitted_s)
    return True


def _recv_img_after(header: dict, image: bytes) -> bool:
    arm_id, session_id, image_name = _frame_ids(header)
    if not image:
        raise InvalidImage("the frame message's image part is empty: send the encoded frame after b'___SPLIT___'")
    decode_image(image, max_aspect_ratio=MAX_ASPECT_RATIO)  # refuse what a frame of the session would be refused for
    settings = state().settings
    archive = after_archive(settings)
    archive.put(arm_id, session_id, image_name, image)
    ops = current_app.extensions.get("sorterbot_ops")
    uploads = getattr(ops, "uploads", None)
    if uploads is not None:
        uploads.submit(archive.path_of(arm_id, session_id, image_name), after_s3_key(arm_id, session_id, image_name))
    logger.info("frame after sorting stored",
                extra={"arm_id": arm_id, "session_id": session_id, "image_name": image_name,
                       "log_type": "recv_img_after"})
    return True


def _get_commands_of_session(payload: dict) -> list:
    session_id = validate_id("session_id", payload.get("session_id"))
    if "arm_constants" not in payload:
        raise BadRequest("missing 'arm_constants': the arm's constants (arm_config.yaml) as a JSON object")
    body = payload["arm_constants"]
    constants = ArmConstants.from_mapping(body)  # reject malformed constants before any lookup
    arm_id = resolve_arm_id(session_id, payload.get("arm_id"), constants)
    return state().service.commands_for_session(arm_id, session_id, body)["wire"]


# --------------------------------------------------------------------------- helpers
class _TooLarge(SorterBotError):
    """A message part over ``MAX_BODY_BYTES``: the problem of Werkzeug's 413 on HTTP."""

    status, title, slug = 413, "Request Entity Too Large", "request-entity-too-large"


def _problem(problem: dict, command: Any) -> dict:
    body = dict(problem)
    body.setdefault("instance", WS_PATH)
    body.setdefault("request_id", request_id())
    if isinstance(command, str):
        body["command"] = command
    return body


def _unknown_command(command: Any, kind: str, known: tuple[str, ...]) -> str:
    if command is None:
        return f"{kind} needs a 'command': one of {', '.join(known)}"
    return f"unknown command {command!r} in {kind}; known: {', '.join(known)}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _websocket_mismatch(error: WebsocketMismatch):
    """Plain HTTP to ``/`` answers 404 like any path without a route; a WebSocket
    handshake on another path answers 400 naming ``/``."""
    from flask import request

    if request.path == WS_PATH:
        return handle_http_exception(NotFound())
    return problem_response({"type": PROBLEM_TYPE_BASE + "bad-request", "title": "Bad Request", "status": 400,
                             "detail": f"WebSocket connections are served on {WS_PATH!r} only, not {request.path!r}"})


def _method_not_allowed(error: MethodNotAllowed):
    """``/`` has only the WebSocket rule: other methods answer 404 as before it had one."""
    from flask import request

    if request.path == WS_PATH:
        return handle_http_exception(NotFound())
    return handle_http_exception(error)
