"""Prometheus metrics of the service: requests, pipeline stages, model load time.

All series live in one process-wide registry, :data:`REGISTRY`, served at ``/metrics``
by :func:`sorterbot_cloud.ops.init_app`. Service code (no Flask import) records stage
times through :func:`observe_stage` or the :func:`stage_timer` context manager, and
model load times through :func:`set_model_load_time` / :func:`model_load_timer`.

Series (names follow the Prometheus naming guide: base unit seconds, ``_total`` for
counters):

- ``sorterbot_http_requests_total{method, route, status}``
- ``sorterbot_http_request_duration_seconds{method, route}`` (histogram)
- ``sorterbot_stage_duration_seconds{stage}`` (histogram), stage one of :data:`STAGES`
- ``sorterbot_model_load_seconds{model}`` (gauge)
- ``sorterbot_control_panel_records_total{outcome}`` (sent, failed, dropped)
- ``sorterbot_s3_uploads_total{outcome}`` (ok, retry, missing) and
  ``sorterbot_s3_uploads_pending`` (gauge)

The gunicorn command of the image runs one worker process with threads, so one
registry per process is the whole picture; scale out with more containers.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

#: Pipeline stages whose durations are recorded (docs/design.rst, Evaluation protocol: speed per stage).
STAGES: tuple[str, ...] = ("decode", "detect", "embed", "store", "trigger", "upload")

#: Histogram buckets in seconds, from 1 ms (decode of a small frame) to 30 s (a cold CPU detector).
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

HTTP_REQUESTS = Counter(
    "sorterbot_http_requests", "HTTP requests answered, by route template and status.",
    ("method", "route", "status"), registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "sorterbot_http_request_duration_seconds", "Time from the first byte read to the response, by route template.",
    ("method", "route"), buckets=STAGE_BUCKETS_S, registry=REGISTRY,
)
STAGE_LATENCY = Histogram(
    "sorterbot_stage_duration_seconds", "Time spent in one pipeline stage.",
    ("stage",), buckets=STAGE_BUCKETS_S, registry=REGISTRY,
)
MODEL_LOAD = Gauge(
    "sorterbot_model_load_seconds", "Time the last load of a model took.", ("model",), registry=REGISTRY,
)
CONTROL_PANEL_RECORDS = Counter(
    "sorterbot_control_panel_records", "Log records meant for the control panel, by outcome.",
    ("outcome",), registry=REGISTRY,
)
S3_UPLOADS = Counter(
    "sorterbot_s3_uploads", "S3 upload attempts of archived images, by outcome.", ("outcome",), registry=REGISTRY,
)
S3_PENDING = Gauge(
    "sorterbot_s3_uploads_pending", "Images spooled on disk and not yet in S3.", registry=REGISTRY,
)

for _stage in STAGES:  # expose every stage from the start, with zero counts
    STAGE_LATENCY.labels(stage=_stage)
for _outcome in ("sent", "failed", "dropped"):
    CONTROL_PANEL_RECORDS.labels(outcome=_outcome)
for _outcome in ("ok", "retry", "missing"):
    S3_UPLOADS.labels(outcome=_outcome)


def _check_stage(name: str) -> str:
    if name not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {name!r}")
    return name


def observe_stage(name: str, seconds: float) -> None:
    """Record that one run of a pipeline stage took ``seconds``.

    Parameters
    ----------
    name : str
        One of :data:`STAGES`.
    seconds : float
        Duration in seconds (>= 0).

    Raises
    ------
    ValueError
        On an unknown stage name or a negative duration.
    """
    _check_stage(name)
    if not seconds >= 0:
        raise ValueError(f"seconds must be >= 0, got {seconds!r}")
    STAGE_LATENCY.labels(stage=name).observe(seconds)


@contextmanager
def stage_timer(name: str) -> Iterator[None]:
    """Time the ``with`` block as one run of stage ``name`` (recorded even if it raises).

    Examples
    --------
    >>> with stage_timer("detect"):
    ...     pass
    """
    _check_stage(name)
    start_s = time.perf_counter()
    try:
        yield
    finally:
        STAGE_LATENCY.labels(stage=name).observe(time.perf_counter() - start_s)


def set_model_load_time(model: str, seconds: float) -> None:
    """Record how long loading ``model`` (e.g. ``"detector"``, ``"embedder"``) took, in seconds."""
    if not seconds >= 0:
        raise ValueError(f"seconds must be >= 0, got {seconds!r}")
    MODEL_LOAD.labels(model=model).set(seconds)


@contextmanager
def model_load_timer(model: str) -> Iterator[None]:
    """Time the ``with`` block as the load of ``model`` (recorded only if it succeeds)."""
    start_s = time.perf_counter()
    yield
    MODEL_LOAD.labels(model=model).set(time.perf_counter() - start_s)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request and its latency (called by the Flask hooks)."""
    HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    HTTP_LATENCY.labels(method=method, route=route).observe(seconds)


def render() -> tuple[bytes, str]:
    """Return the exposition text of :data:`REGISTRY` and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
