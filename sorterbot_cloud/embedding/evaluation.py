"""Evaluate an embedder: grouping quality (adjusted Rand index) and speed.

Grouping protocol: draw a random set of 2 to 4 item types, a few crops of
each, embed them, group them with :func:`~sorterbot_cloud.embedding.clustering.cluster_embeddings`
(k = number of types drawn) and score the grouping against the true types with the
adjusted Rand index (Hubert & Arabie 1985; ``sklearn.metrics.adjusted_rand_score``:
1 = perfect, about 0 = chance). The figure is the mean over many such draws.
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score

from sorterbot_cloud.errors import BadRequest

from .clustering import cluster_embeddings


def grouping_aris(
    embeddings: np.ndarray,
    type_ids: np.ndarray,
    *,
    n_groupings: int = 100,
    min_types: int = 2,
    max_types: int = 4,
    crops_per_type: int = 8,
    seed: int = 0,
    n_init: int = 10,
) -> np.ndarray:
    """Adjusted Rand index of K-Means groupings over random draws of types.

    Each draw picks ``m`` types uniformly from ``min_types .. min(max_types, n_types)``,
    then ``crops_per_type`` crops of each (all of a type's crops when it has fewer),
    without replacement, clusters them with ``k = m`` and scores against the true types.

    Parameters
    ----------
    embeddings : ndarray of shape (N, D), float
    type_ids : ndarray of shape (N,), int
    n_groupings : int
    min_types, max_types : int
    crops_per_type : int
    seed : int
        Seed of the draws (``numpy.random.default_rng``).
    n_init : int
        K-Means restarts.

    Returns
    -------
    ndarray of shape (n_groupings,), float64
        One ARI per draw.

    Raises
    ------
    BadRequest
        If shapes disagree, fewer than ``min_types`` types are present, or
        ``min_types < 2`` or ``max_types < min_types``.
    """
    embeddings = np.asarray(embeddings)
    type_ids = np.asarray(type_ids).reshape(-1)
    if embeddings.ndim != 2 or embeddings.shape[0] != type_ids.shape[0]:
        raise BadRequest(f"embeddings (N, D) and type_ids (N,) must agree, got {embeddings.shape} and {type_ids.shape}")
    types = np.unique(type_ids)
    if min_types < 2 or max_types < min_types:
        raise BadRequest(f"need 2 <= min_types <= max_types, got {min_types}, {max_types}")
    if len(types) < min_types:
        raise BadRequest(f"need at least {min_types} types, got {len(types)}")
    rng = np.random.default_rng(seed)
    by_type = {t: np.flatnonzero(type_ids == t) for t in types}
    hi = min(max_types, len(types))
    out = np.zeros(n_groupings)
    for g in range(n_groupings):
        m = int(rng.integers(min_types, hi + 1))
        chosen = rng.choice(types, m, replace=False)
        idx = np.concatenate([rng.choice(by_type[t], min(crops_per_type, len(by_type[t])), replace=False) for t in chosen])
        pred = cluster_embeddings(embeddings[idx], m, random_state=0, n_init=n_init)
        out[g] = adjusted_rand_score(type_ids[idx], pred)
    return out


def all_crops_ari(embeddings: np.ndarray, type_ids: np.ndarray, n_init: int = 10) -> float:
    """ARI of one K-Means grouping of all crops, k = number of types."""
    k = len(np.unique(type_ids))
    return float(adjusted_rand_score(type_ids, cluster_embeddings(embeddings, k, random_state=0, n_init=n_init)))


def time_embedding(embedder, crops: list[np.ndarray], *, batch_size: int = 32, repeats: int = 10, warmup: int = 2) -> dict:
    """Median wall time per crop of :meth:`Embedder.embed` on batches of ``batch_size`` crops.

    Preprocessing (letterboxing) is included. Uses the torch thread count in effect.

    Returns
    -------
    dict
        ``{"ms_per_crop_median", "ms_per_crop_min", "batch_size", "repeats"}``.
    """
    batch = [crops[i % len(crops)] for i in range(batch_size)]
    for _ in range(warmup):
        embedder.embed(batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        embedder.embed(batch)
        times.append((time.perf_counter() - t) * 1000 / batch_size)
    return {"ms_per_crop_median": statistics.median(times), "ms_per_crop_min": min(times), "batch_size": batch_size, "repeats": repeats}


def sorted_correctly(cluster_ids: np.ndarray, type_ids: np.ndarray, n_containers: int) -> bool:
    """docs/design.rst's "sorted correctly" rule for a grouping of items into containers.

    No true type is split across groups, and where there are at least as many containers
    as types, no group holds two types.

    Parameters
    ----------
    cluster_ids, type_ids : ndarray of shape (N,), int
    n_containers : int

    Returns
    -------
    bool
    """
    cluster_ids, type_ids = np.asarray(cluster_ids), np.asarray(type_ids)
    if any(len(np.unique(cluster_ids[type_ids == t])) > 1 for t in np.unique(type_ids)):
        return False
    if n_containers >= len(np.unique(type_ids)):
        return all(len(np.unique(type_ids[cluster_ids == g])) == 1 for g in np.unique(cluster_ids))
    return True


def grouping_choice_shares(
    embeddings: np.ndarray,
    type_ids: np.ndarray,
    group_distances: Sequence[float],
    *,
    n_trials: int = 400,
    seed: int = 0,
    n_init: int = 10,
) -> dict[str, float]:
    """Share of simulated sessions whose items the planner groups correctly, per rule.

    Each trial draws a session like the simulated evaluation sessions: 2 to 4 types
    (``m``), ``max(3, m)`` to 8 items (every drawn type at least once, one random crop per
    item, drawn with replacement) and 1 to 4 containers. The items are grouped by
    :func:`sorterbot_cloud.planner.group_items`, with the largest-gap rule
    (``"gap"``) and with each absolute ``group_distance`` (``"d=<value>"``), and the
    grouping is scored by :func:`sorted_correctly`. ``"oracle_k"`` gives K-Means the
    right number of groups, ``min(m, containers)``: the ceiling any rule for choosing the
    number can reach with these embeddings.

    Parameters
    ----------
    embeddings : ndarray of shape (N, D), float
    type_ids : ndarray of shape (N,), int
        At least 2 types.
    group_distances : sequence of float
    n_trials, seed, n_init : int

    Returns
    -------
    dict
        Rule name -> share of trials sorted correctly, in [0, 1].

    Raises
    ------
    BadRequest
        If there are fewer than 2 types or the shapes disagree.
    """
    from sorterbot_cloud import planner

    x = np.asarray(embeddings, dtype=np.float64)
    type_ids = np.asarray(type_ids)
    types = np.unique(type_ids)
    if len(types) < 2 or x.ndim != 2 or len(x) != len(type_ids):
        raise BadRequest(f"need >= 2 types and embeddings (N, D) matching type_ids, got {len(types)} types, {x.shape}, {type_ids.shape}")
    rng = np.random.default_rng(seed)
    rules: dict[str, float | None] = {"gap": None, **{f"d={d:g}": float(d) for d in group_distances}}
    hits = {name: 0 for name in [*rules, "oracle_k"]}
    for _ in range(n_trials):
        m = int(rng.integers(2, min(4, len(types)) + 1))
        n_items = int(rng.integers(max(3, m), 9))
        n_containers = int(rng.integers(1, 5))
        drawn = rng.choice(types, m, replace=False)
        item_types = np.concatenate([drawn, rng.choice(drawn, n_items - m)])
        idx = np.array([rng.choice(np.flatnonzero(type_ids == t)) for t in item_types])
        for name, distance in rules.items():
            labels = planner.group_items(n_containers, x[idx], n_init=n_init, group_distance=distance)
            hits[name] += sorted_correctly(labels, item_types, n_containers)
        k = min(m, n_containers)
        labels = cluster_embeddings(x[idx], k, n_init=n_init) if k > 1 else np.zeros(len(idx), np.int64)
        hits["oracle_k"] += sorted_correctly(labels, item_types, n_containers)
    return {name: count / n_trials for name, count in hits.items()}


def photo_grouping(photo_embeddings: Sequence[np.ndarray], photo_type_ids: Sequence[np.ndarray],
                   group_distance: float | None, n_init: int = 10) -> dict:
    """Per-photo grouping of real items: the service's own choice of the number of groups, and the true one.

    Every photo is grouped on its own, as a session would be: the number of groups is
    chosen by :func:`sorterbot_cloud.planner.group_items` (``n_containers`` = the photo's
    item count, so nothing caps the choice) at ``group_distance``, and scored against the
    photo's true kinds with the adjusted Rand index. Photos with fewer than 2 items are
    skipped (any grouping of one item is right).

    Parameters
    ----------
    photo_embeddings : sequence of ndarray of shape (n_i, D), float
        L2-normalised embeddings of each photo's items.
    photo_type_ids : sequence of ndarray of shape (n_i,), int
        True kind of each item.
    group_distance : float or None
        Cosine distance that splits kinds (the embedder's ``group_cosine_distance``).
    n_init : int
        K-Means restarts.

    Returns
    -------
    dict
        ``photos`` (scored), ``ari_own_k_mean`` (per-photo ARI with the chosen number of
        groups, mean), ``k_exact`` (share of photos where the chosen number is the true
        one), ``k_too_many`` / ``k_too_few`` (shares), ``ari_true_k_mean`` (per-photo ARI
        when K-Means is told the true number) and ``sorted_share`` (share of photos with
        ARI 1 at the chosen number).
    """
    from sorterbot_cloud.planner import group_items

    own, true_k, exact, more, fewer = [], [], 0, 0, 0
    for emb, types in zip(photo_embeddings, photo_type_ids, strict=True):
        types = np.asarray(types)
        if len(types) < 2:
            continue
        k_true = len(np.unique(types))
        labels = group_items(len(types), emb, n_init=n_init, group_distance=group_distance)
        k = len(np.unique(labels))
        exact += k == k_true
        more += k > k_true
        fewer += k < k_true
        own.append(adjusted_rand_score(types, labels))
        true_k.append(adjusted_rand_score(types, cluster_embeddings(emb, k_true, random_state=0, n_init=n_init)))
    n = len(own)
    if n == 0:
        return {"photos": 0}
    return {"photos": n, "ari_own_k_mean": float(np.mean(own)), "k_exact": exact / n, "k_too_many": more / n,
            "k_too_few": fewer / n, "ari_true_k_mean": float(np.mean(true_k)),
            "sorted_share": float(np.mean(np.asarray(own) > 0.999))}

