"""Admission control of the model routes: a bounded FIFO queue in front of the detector.

Ingest (``POST /process_image``, ``PUT|POST /v1/arms/<a>/sessions/<s>/frames/<name>``) and
``/predict`` run the detector and the embedder on the CPU: a process works through only a
few of them at once. :class:`AdmissionControl` is a counting semaphore of
``Settings.ingest_max_in_flight`` slots with a first-in-first-out waiting line of at most
``Settings.ingest_max_queued`` requests, each waiting at most
``Settings.ingest_queue_timeout_s`` seconds for its slot. A request that finds the line full,
or whose wait runs out, is answered ``503 Service Unavailable`` with a ``Retry-After`` header
(whole seconds, RFC 9110 section 10.2.3) and an RFC 9457 problem body, before its body is
read: nothing of it is stored, and the client posts it again later (posting a frame again
is idempotent, DESIGN.md). Session triggers only read the database and are not queued.

The guard runs as a ``before_request`` hook (acquire) and a ``teardown_request`` hook
(release, also after an error), registered by :func:`init_app` from the application factory
after the ops hooks, so unauthenticated requests are refused before they take a place.

The bound is per worker process. gunicorn's threaded worker hands each connection to one of
its ``--threads`` threads; a connection that finds every thread busy waits in gunicorn, out
of this guard's sight. Run at least ``ingest_max_in_flight + ingest_max_queued + 2`` threads
per worker so that waiting requests sit here, in a bounded line, and refusals are answered
at once.

Prometheus series (in :data:`sorterbot_cloud.ops.metrics.REGISTRY`, served at ``/metrics``):

- ``sorterbot_ingest_in_flight`` (gauge): model requests running now;
- ``sorterbot_ingest_queued`` (gauge): model requests waiting for a slot now;
- ``sorterbot_ingest_waited_total`` (counter): model requests that had to wait for a slot;
- ``sorterbot_ingest_refused_total{reason}`` (counter): 503 answers, ``reason`` one of
  ``queue_full`` and ``timeout``;
- ``sorterbot_ingest_queue_wait_seconds`` (histogram): how long admitted requests waited.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass

from flask import Flask, g, request
from prometheus_client import Counter, Gauge, Histogram

from sorterbot_cloud.api.errors import PROBLEM_TYPE_BASE, problem_response
from sorterbot_cloud.ops.metrics import REGISTRY, STAGE_BUCKETS_S

EXTENSION_KEY = "sorterbot_admission"

#: Flask endpoints that run the models and are admitted through the queue.
GUARDED_ENDPOINTS = frozenset({"compat.process_image", "v1.put_frame", "predict.predict"})

#: Reasons of a refusal (the ``reason`` label of ``sorterbot_ingest_refused_total``).
REFUSAL_REASONS = ("queue_full", "timeout")

#: Weight of the newest duration in the running mean used for ``Retry-After``.
EMA_WEIGHT = 0.2
#: Mean duration of one model request assumed before any finished (seconds).
INITIAL_MEAN_S = 1.0

IN_FLIGHT = Gauge("sorterbot_ingest_in_flight", "Model requests (ingest, predict) running now.", registry=REGISTRY)
QUEUED = Gauge("sorterbot_ingest_queued", "Model requests waiting for a slot now.", registry=REGISTRY)
WAITED = Counter("sorterbot_ingest_waited", "Model requests that had to wait for a slot.", registry=REGISTRY)
REFUSED = Counter(
    "sorterbot_ingest_refused", "Model requests answered 503 by admission control, by reason.",
    ("reason",), registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "sorterbot_ingest_queue_wait_seconds", "Time admitted model requests waited for a slot.",
    buckets=STAGE_BUCKETS_S, registry=REGISTRY,
)
for _reason in REFUSAL_REASONS:
    REFUSED.labels(reason=_reason)


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted.

    Attributes
    ----------
    reason : {'queue_full', 'timeout'}
    retry_after_s : int
        Whole seconds after which a retry is likely admitted (>= 1).
    in_flight, queued : int
        Requests running and waiting when it was refused.
    """

    reason: str
    retry_after_s: int
    in_flight: int
    queued: int


class AdmissionControl:
    """A semaphore of ``max_in_flight`` slots with a bounded FIFO line of waiters.

    A released slot is handed to the longest-waiting request, so a newcomer never overtakes
    the line and a queued request waits at most ``queue_timeout_s``.

    Parameters
    ----------
    max_in_flight : int
        Requests that run at once (>= 1).
    max_queued : int
        Requests that may wait for a slot (>= 0); more are refused at once.
    queue_timeout_s : float
        Longest wait for a slot, seconds (> 0); a request still waiting then is refused.

    Raises
    ------
    ValueError
        On a bound out of range.
    """

    def __init__(self, max_in_flight: int, max_queued: int, queue_timeout_s: float) -> None:
        if int(max_in_flight) < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if int(max_queued) < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued}")
        if not (math.isfinite(queue_timeout_s) and queue_timeout_s > 0):
            raise ValueError(f"queue_timeout_s must be a positive number of seconds, got {queue_timeout_s}")
        self.max_in_flight = int(max_in_flight)
        self.max_queued = int(max_queued)
        self.queue_timeout_s = float(queue_timeout_s)
        self._lock = threading.Lock()
        self._waiters: collections.deque[threading.Event] = collections.deque()
        self._in_flight = 0
        self._mean_s = INITIAL_MEAN_S

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    def retry_after_s(self) -> int:
        """Whole seconds until the line ahead of a new request is likely worked off (>= 1).

        The requests running and waiting, divided by the slots, times the running mean
        duration of one request.
        """
        ahead = self._in_flight + len(self._waiters)
        return max(1, math.ceil(ahead / self.max_in_flight * self._mean_s))

    def acquire(self) -> Refusal | None:
        """Take a slot, waiting in line if need be.

        Returns
        -------
        Refusal or None
            None when a slot was taken (call :meth:`release` once the work is done), else
            why not.
        """
        start_s = time.perf_counter()
        with self._lock:
            if self._in_flight < self.max_in_flight and not self._waiters:
                self._in_flight += 1
                IN_FLIGHT.inc()
                QUEUE_WAIT.observe(0.0)
                return None
            if len(self._waiters) >= self.max_queued:
                return self._refuse("queue_full")
            ticket = threading.Event()
            self._waiters.append(ticket)
            QUEUED.inc()
            WAITED.inc()
        admitted = ticket.wait(self.queue_timeout_s)
        with self._lock:
            if not admitted and not ticket.is_set():
                self._waiters.remove(ticket)
                QUEUED.dec()
                return self._refuse("timeout")
        QUEUE_WAIT.observe(time.perf_counter() - start_s)
        return None  # the releasing request handed its slot over (and decremented QUEUED)

    def release(self, duration_s: float | None = None) -> None:
        """Give the slot back, to the first request in line if one waits.

        Parameters
        ----------
        duration_s : float, optional
            How long the request held its slot (seconds), for :meth:`retry_after_s`.
        """
        with self._lock:
            if duration_s is not None and duration_s >= 0:
                self._mean_s += EMA_WEIGHT * (float(duration_s) - self._mean_s)
            if self._waiters:
                self._waiters.popleft().set()  # the slot changes hands: in_flight unchanged
                QUEUED.dec()
            else:
                self._in_flight -= 1
                IN_FLIGHT.dec()

    def _refuse(self, reason: str) -> Refusal:
        REFUSED.labels(reason=reason).inc()
        return Refusal(reason, self.retry_after_s(), self._in_flight, len(self._waiters))

    @classmethod
    def from_settings(cls, settings) -> "AdmissionControl | None":
        """The control of ``settings`` (None when ``ingest_max_in_flight`` is 0: no limit)."""
        if not settings.ingest_max_in_flight:
            return None
        return cls(settings.ingest_max_in_flight, settings.ingest_max_queued, settings.ingest_queue_timeout_s)


def refusal_response(refusal: Refusal, control: AdmissionControl):
    """The 503 problem response of a refusal, with ``Retry-After``."""
    if refusal.reason == "queue_full":
        why = (f"{refusal.in_flight} requests are being processed and {refusal.queued} are waiting, "
               f"the most this server queues")
    else:
        why = f"the request waited {control.queue_timeout_s:g} s for a free slot without getting one"
    problem = {
        "type": PROBLEM_TYPE_BASE + "server-busy",
        "title": "Service unavailable",
        "status": 503,
        "detail": f"server busy: {why}; nothing was stored, send the request again in {refusal.retry_after_s} s",
        "reason": refusal.reason,
        "retry_after_s": refusal.retry_after_s,
    }
    return problem_response(problem, {"Retry-After": str(refusal.retry_after_s)})


def init_app(app: Flask, settings) -> AdmissionControl | None:
    """Guard :data:`GUARDED_ENDPOINTS` of ``app`` with the admission control of ``settings``.

    Call it from the application factory after the ops hooks (request ids, auth).

    Returns
    -------
    AdmissionControl or None
        Also at ``app.extensions["sorterbot_admission"]``; None (and nothing registered)
        when ``settings.ingest_max_in_flight`` is 0.
    """
    control = AdmissionControl.from_settings(settings)
    app.extensions[EXTENSION_KEY] = control
    if control is None:
        return None

    @app.before_request
    def _admission_acquire():
        if request.endpoint not in GUARDED_ENDPOINTS:
            return None
        refusal = control.acquire()
        if refusal is not None:
            return refusal_response(refusal, control)
        g._sorterbot_admitted_s = time.perf_counter()
        return None

    @app.teardown_request
    def _admission_release(_error):
        admitted_s = g.pop("_sorterbot_admitted_s", None)
        if admitted_s is not None:
            control.release(time.perf_counter() - admitted_s)

    return control
