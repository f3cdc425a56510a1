"""Ship session log records to the SorterBot control panel, off the request path.

The original SorterBot control panel (a Django app) accepts log records at
``POST http://<CONTROL_PANEL_HOST>/log/`` as the form fields that Python's
``logging.handlers.HTTPHandler`` sends (``args`` holding a JSON object with
``arm_id``, ``session_id``, ``log_type``; ``msg``, ``levelname``, ``name``, ``created``,
``asctime``, ``pathname``, ``lineno``). :class:`ControlPanelShipper` posts the same
fields, plus ``request_id`` and a timing mark: ``created`` (Unix time, seconds) and, when
the record has one, ``duration_ms``.

Records go through a bounded in-memory queue to one background thread, so a slow or
dead control panel never slows or fails a request: when the queue is full the record is
dropped and counted (``sorterbot_control_panel_records_total{outcome="dropped"}``);
a failed POST is counted (``outcome="failed"``) and not retried (these are logs, not data).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Mapping

import requests

from . import metrics
from .logs import ContextFilter

log = logging.getLogger(__name__)

#: Fields a record must carry to be shipped.
REQUIRED_FIELDS = ("arm_id", "session_id", "log_type")

_STOP = object()


def control_panel_url(host: str, path: str = "/log/") -> str:
    """Return the log endpoint URL of ``host`` (``host:port`` or a full ``http(s)://`` base URL).

    Raises
    ------
    ValueError
        If ``host`` is empty.
    """
    host = (host or "").strip().rstrip("/")
    if not host:
        raise ValueError("control panel host must not be empty")
    if "://" not in host:
        host = "http://" + host
    return host + path


def record_to_payload(record: logging.LogRecord) -> dict[str, str]:
    """Return the form fields for one record (see the module docstring).

    Raises
    ------
    ValueError
        If the record lacks one of :data:`REQUIRED_FIELDS`.
    """
    args: dict[str, Any] = {}
    for name in REQUIRED_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            raise ValueError(f"record has no {name}")
        args[name] = value
    payload = {
        "args": json.dumps(args),
        "msg": record.getMessage(),
        "levelname": record.levelname,
        "name": record.name,
        "created": repr(record.created),
        "asctime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)),
        "pathname": record.pathname,
        "lineno": str(record.lineno),
    }
    for name in ("request_id", "duration_ms"):
        value = getattr(record, name, None)
        if value is not None:
            payload[name] = str(value)
    return payload


class ControlPanelShipper:
    """A bounded queue of log payloads and one thread that POSTs them.

    Parameters
    ----------
    host : str
        ``CONTROL_PANEL_HOST``: ``host:port`` or a base URL.
    queue_size : int
        Records waiting at most; newer ones are dropped when it is full.
    timeout_s : float
        Connect and read timeout of one POST, seconds.
    path : str
        Log endpoint path of the control panel.
    """

    def __init__(self, host: str, *, queue_size: int = 1000, timeout_s: float = 2.0, path: str = "/log/"):
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.url = control_panel_url(host, path)
        self.timeout_s = float(timeout_s)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._http = requests.Session()
        self._lock = threading.Lock()
        self.sent = self.failed = self.dropped = 0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="control-panel-shipper", daemon=True)
        self._thread.start()

    def submit(self, payload: Mapping[str, str]) -> bool:
        """Queue one payload without blocking; return False (and count it) if it was dropped."""
        try:
            self._queue.put_nowait(dict(payload))
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
            metrics.CONTROL_PANEL_RECORDS.labels(outcome="dropped").inc()
            return False

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is _STOP:
                    return
                self._post(payload)
            finally:
                self._queue.task_done()

    def _post(self, payload: dict) -> None:
        try:
            response = self._http.post(self.url, data=payload, timeout=self.timeout_s)
            ok = response.status_code < 400
            reason = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            ok, reason = False, type(exc).__name__
        with self._lock:
            if ok:
                self.sent += 1
            else:
                self.failed += 1
            was_failing, self._failing = self._failing, not ok
        metrics.CONTROL_PANEL_RECORDS.labels(outcome="sent" if ok else "failed").inc()
        if not ok and not was_failing:  # log the change of state only, not every record
            log.warning("control panel at %s does not take logs (%s); records are dropped until it does", self.url, reason)
        elif ok and was_failing:
            log.info("control panel at %s takes logs again", self.url)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued payload was posted (or failed); return False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Post what is queued (within ``timeout_s``) and stop the thread."""
        if not self._thread.is_alive():
            return
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(_STOP, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    return  # daemon thread; it ends with the process
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._http.close()


class ControlPanelHandler(logging.Handler):
    """Logging handler that hands records carrying ``arm_id``, ``session_id`` and
    ``log_type`` to a :class:`ControlPanelShipper`; other records are ignored."""

    def __init__(self, shipper: ControlPanelShipper, level: int = logging.INFO):
        super().__init__(level)
        self.shipper = shipper
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        if any(getattr(record, name, None) is None for name in REQUIRED_FIELDS):
            return
        try:
            self.shipper.submit(record_to_payload(record))
        except Exception:  # never let log shipping fail the caller
            self.handleError(record)
