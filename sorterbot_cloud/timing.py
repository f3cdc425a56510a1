"""Per-stage timing of a request, reported in answers and to Prometheus."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Mapping


class StageTimer:
    """Collects per-stage wall-clock durations in milliseconds (``time.perf_counter``).

    ``with timer.stage("detect"): ...`` adds the block's duration to that stage;
    :meth:`finish` returns every stage rounded to microseconds plus ``total``, the time
    since the timer was made.
    """

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3

    def finish(self) -> dict[str, float]:
        """Stage durations (ms) and ``total`` (ms since construction)."""
        out = {k: round(v, 3) for k, v in self.ms.items()}
        out["total"] = round((time.perf_counter() - self._start) * 1e3, 3)
        return out


def observe_stages(timings_ms: Mapping[str, float], stages: Mapping[str, str]) -> None:
    """Record stage durations in the Prometheus histograms of :mod:`sorterbot_cloud.ops.metrics`.

    ``stages`` maps a key of ``timings_ms`` to the metric's stage name. Does nothing when
    the ops package is not installed.
    """
    try:
        from sorterbot_cloud.ops.metrics import observe_stage
    except ImportError:
        return
    for key, stage in stages.items():
        if key in timings_ms:
            observe_stage(stage, timings_ms[key] / 1e3)
