"""Problem-detail answers for the errors the HTTP servers answer before the app runs.

gunicorn and Werkzeug's development server refuse some requests while parsing them (an
over-long request line, too many or too long header fields, a malformed request): the
app never sees those, and both servers answer them with HTML pages of their own. Here
they answer with the service's JSON contract instead (RFC 9457 problem details,
``application/problem+json``, ``type``, ``title``, ``status``, ``detail``), keeping the
status and reason each server chose:

- :class:`ProblemThreadWorker`: gunicorn's threaded worker (``gthread``, what
  ``--threads`` > 1 runs) whose :meth:`~ProblemThreadWorker.handle_error` writes the
  problem body; gunicorn still decides the status (414 for the request line, 431 for the
  header fields, 400 for malformed requests, 500 for an error before the app answered),
  logs the error and writes the access record. :mod:`.gunicorn_conf` selects it.
- :class:`ProblemRequestHandler`: Werkzeug's request handler whose ``send_error`` (from
  :class:`http.server.BaseHTTPRequestHandler`, which limits a request line to 65,536
  bytes, a header line to 65,536 bytes and a request to 100 header fields) writes the
  problem body; ``sorterbot-cloud serve`` uses it.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker
from werkzeug.serving import WSGIRequestHandler

#: Base of the problem ``type`` URIs (as :data:`sorterbot_cloud.api.errors.PROBLEM_TYPE_BASE`).
PROBLEM_TYPE_BASE = "https://sorterbot.cloud/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

#: What to tell a client about each status gunicorn or http.server answers by itself.
ADVICE = {
    400: "the request is not valid HTTP/1.1",
    414: "the request line (method, URL with its query and HTTP version) is longer than this server accepts",
    431: "the request has more header fields, or a longer header field, than this server accepts",
    500: "the server failed before the application answered",
    501: "the request uses a transfer coding or method this server does not support",
}


def problem_body(status: int, reason: str, mesg: str = "") -> bytes:
    """The JSON problem body of a server-level error.

    Parameters
    ----------
    status : int
        HTTP status chosen by the server.
    reason : str
        Its reason phrase, used as ``title``.
    mesg : str
        The server's own message (e.g. gunicorn's ``Request Line is too large (5000 > 4094)``),
        appended to the ``detail``.

    Returns
    -------
    bytes
        UTF-8 JSON object with ``type``, ``title``, ``status`` and ``detail``.
    """
    advice = ADVICE.get(status, reason.lower() or "the server refused the request")
    detail = f"{advice}: {mesg}" if mesg else advice
    slug = "-".join(reason.lower().replace("'", "").split()) or "error"
    return json.dumps({"type": PROBLEM_TYPE_BASE + slug, "title": reason, "status": int(status),
                       "detail": detail}).encode("utf-8")


def problem_response_bytes(status: int, reason: str, mesg: str = "") -> bytes:
    """A complete ``HTTP/1.1`` response (status line, headers, body) closing the connection."""
    body = problem_body(status, reason, mesg)
    head = (f"HTTP/1.1 {int(status)} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_MEDIA_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class _CapturedError:
    """Stands in for the client socket while gunicorn writes its HTML error page, keeping
    the bytes (only the status line is read from them)."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self):
        return None

    def setblocking(self, flag) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.data += bytes(data)

    def status(self) -> tuple[int, str] | None:
        """``(status, reason)`` of the captured status line, or None if nothing was written."""
        line = self.data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return None
        return int(parts[1]), (parts[2] if len(parts) > 2 else "")


class ProblemThreadWorker(ThreadWorker):
    """gunicorn's threaded worker, answering its own errors with problem details.

    gunicorn's :meth:`~gunicorn.workers.base.Worker.handle_error` chooses the status,
    logs and writes the access record, then writes an HTML page
    (:func:`gunicorn.util.write_error`). Here the page goes to :class:`_CapturedError`
    and the client gets :func:`problem_response_bytes` of the same status instead, with
    gunicorn's message (``str(exc)``) in the ``detail``.
    """

    def handle_error(self, req, client, addr, exc):
        captured = _CapturedError()
        super().handle_error(req, captured, addr, exc)
        status = captured.status()
        if status is None:
            return
        mesg = "" if status[0] >= 500 else str(exc)
        try:
            util.write_nonblock(client, problem_response_bytes(status[0], status[1], mesg))
        except Exception:  # noqa: BLE001 - as gunicorn: the client may be gone
            self.log.debug("Failed to send error message.")


class ProblemRequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler, answering http.server's own errors with problem details."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer ``code`` with a problem body (as :meth:`http.server.BaseHTTPRequestHandler.send_error`,
        which writes HTML)."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        self.log_error("code %d, message %s", code, message or phrase)
        self.send_response(code, phrase)
        self.send_header("Connection", "close")
        body = b""
        if code >= 200 and code not in (HTTPStatus.NO_CONTENT, HTTPStatus.RESET_CONTENT, HTTPStatus.NOT_MODIFIED):
            body = problem_body(code, phrase, message if message and message != phrase else "")
            self.send_header("Content-Type", PROBLEM_MEDIA_TYPE)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
