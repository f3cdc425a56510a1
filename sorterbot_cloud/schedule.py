"""The learning-rate schedule of every trainer: linear warm-up, then cosine decay.

The detector (:func:`sorterbot_cloud.detection.train.train`), its refine head
(:func:`sorterbot_cloud.detection.refine_training.train_refine_head`) and the embedder
(:func:`sorterbot_cloud.embedding.training.train_embedder`) all follow it. A run's progress is the
larger of its share of steps done and its share of a time budget spent, so a run on a
busy machine still ends on time, at the end of its schedule (the cosine schedule of
Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017,
without restarts; the warm-up of Goyal et al., "Accurate, Large Minibatch SGD", 2017).
"""

from __future__ import annotations

import math

#: Learning-rate multiplier at the start of the warm-up and at the end of the run.
FLOOR = 0.01


def progress(step: int, total_steps: int, elapsed_s: float = 0.0, time_budget_s: float | None = None) -> float:
    """Share of the run done: ``max(step / total_steps, elapsed_s / time_budget_s)``.

    Parameters
    ----------
    step : int
        Optimiser steps done.
    total_steps : int
        Steps of the whole schedule (>= 1).
    elapsed_s : float
        Training time so far, seconds.
    time_budget_s : float or None
        The run's time budget, seconds; None or 0: steps alone.

    Returns
    -------
    float
        >= 0; the run is over at 1.

    Raises
    ------
    ValueError
        If ``total_steps`` < 1.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    done = step / total_steps
    if time_budget_s:
        done = max(done, elapsed_s / time_budget_s)
    return done


def lr_factor(step: int, run_progress: float, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate at ``step``.

    Linear from :data:`FLOOR` to 1 over the first ``warmup_steps`` steps, then
    ``FLOOR + (1 - FLOOR) * (1 + cos(pi * progress)) / 2``, which reaches :data:`FLOOR`
    when the run's progress reaches 1.

    Parameters
    ----------
    step : int
        Optimiser steps done.
    run_progress : float
        :func:`progress` of the run.
    warmup_steps : int
        0: no warm-up.

    Returns
    -------
    float
        In [FLOOR, 1].
    """
    if step < warmup_steps:
        return FLOOR + (1.0 - FLOOR) * step / warmup_steps
    return FLOOR + (1.0 - FLOOR) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, run_progress))))


__all__ = ["FLOOR", "lr_factor", "progress"]
