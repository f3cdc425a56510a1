"""Group item embeddings with K-Means (scikit-learn), deterministically."""

from __future__ import annotations

import threading

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import ThreadpoolController

from sorterbot_cloud.errors import BadRequest

_CONTROLLER: ThreadpoolController | None = None
_CONTROLLER_LOCK = threading.Lock()


def _one_openmp_thread():
    """Context limiting OpenMP (scikit-learn's K-Means) to one thread, in the calling thread.

    A session's items are a few dozen points at most: one thread does the work in about
    3.6 ms, while scikit-learn's default (one thread per core) took 8.3 ms median and up
    to 118 ms when the other core was busy (its threads wait at barriers for a descheduled
    sibling), measured on the 2-core reference machine (20 runs, 8 x 512 points, k = 3,
    n_init = 10). ``omp_set_num_threads`` sets the calling thread's value only, so
    concurrent requests (the detector's own threads) are not affected. The controller
    (a scan of the loaded libraries, ~9 ms) is built once.
    """
    global _CONTROLLER
    with _CONTROLLER_LOCK:
        if _CONTROLLER is None:
            _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="openmp")


def canonical_labels(cluster_ids: np.ndarray) -> np.ndarray:
    """Renumber cluster ids by first occurrence: the first row's group is 0, the next new one 1, ...

    K-Means numbers its clusters arbitrarily; this makes equal groupings equal arrays.

    Parameters
    ----------
    cluster_ids : ndarray of shape (N,), int

    Returns
    -------
    ndarray of shape (N,), int64
    """
    cluster_ids = np.asarray(cluster_ids).reshape(-1)
    _, first_index, inverse = np.unique(cluster_ids, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first_index))  # rank of each unique id by first appearance
    return order[inverse].astype(np.int64)


def cluster_embeddings(
    embeddings: np.ndarray, n_clusters: int, random_state: int = 0, n_init: int = 10
) -> np.ndarray:
    """Group embeddings into ``n_clusters`` groups with K-Means.

    Uses scikit-learn's ``KMeans`` (k-means++ seeding, Lloyd iterations) with a fixed
    ``random_state`` and ``n_init`` restarts, in float64, so the same input always gives
    the same output. The ids are renumbered by first occurrence (:func:`canonical_labels`).
    With ``n_clusters >= N`` every embedding is its own group (ids ``0 .. N-1``);
    identical embeddings may still share a group when K-Means finds fewer distinct points
    than ``n_clusters``.

    Parameters
    ----------
    embeddings : ndarray of shape (N, D), float
    n_clusters : int
        Number of groups asked for, ``>= 1``.
    random_state : int, default 0
    n_init : int, default 10
        K-Means restarts; the run with the lowest inertia wins.

    Returns
    -------
    cluster_ids : ndarray of shape (N,), int64
        Values in ``[0, min(n_clusters, N))``, numbered by first occurrence.

    Raises
    ------
    BadRequest
        If ``embeddings`` is not a finite 2-D array, or ``n_clusters`` or ``n_init`` is < 1.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise BadRequest(f"embeddings must have shape (N, D), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise BadRequest("embeddings must be finite")
    if int(n_clusters) < 1:
        raise BadRequest(f"n_clusters must be >= 1, got {n_clusters}")
    if int(n_init) < 1:
        raise BadRequest(f"n_init must be >= 1, got {n_init}")
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    if n_clusters >= n:
        return np.arange(n, dtype=np.int64)
    if n_clusters == 1:
        return np.zeros(n, np.int64)
    n_distinct = len(np.unique(x, axis=0))
    k = min(int(n_clusters), n_distinct)
    if k == 1:
        return np.zeros(n, np.int64)
    km = KMeans(n_clusters=k, n_init=int(n_init), random_state=int(random_state))
    with _one_openmp_thread():
        labels = km.fit_predict(x)
    return canonical_labels(labels)
