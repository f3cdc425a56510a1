"""Groups -> containers, move order, commands (docs/design.rst, Sorting semantics).

:func:`plan` takes the session's items with their group labels (``cluster_ids``) and
the containers, and returns one :class:`~sorterbot_cloud.structures.Command` per item:

- **assignment**: group ``g`` to container ``c`` costs the summed planar distance from
  the group's items to the container, ``sum_i |item_i - container_c|`` (a carry from
  each item to its drop point). Groups are assigned to distinct containers by the
  Hungarian method (``scipy.optimize.linear_sum_assignment``), which minimises the total
  carry. With fewer groups than containers some containers stay empty; with more groups
  than containers (not produced by the service, which clusters into at most as many
  groups as containers) the left-over groups go to their cheapest container.
- **order**: the arm starts at its rest pose (the base axis, ``x = y = 0``), picks an
  item, drops it, goes to the next item, ... The carries are fixed by the assignment;
  only the empty runs (rest -> first item, container -> next item) depend on the order.
  Up to :data:`MAX_EXACT_MOVES` moves the shortest order is found exactly (Held-Karp
  dynamic programme over subsets); beyond, it is built greedily (nearest next item from
  where the arm is) and improved by 2-opt segment reversals until no reversal shortens
  the tour. Everything is deterministic (ties broken by index).

Distances use the objects' planar ``x_mm, y_mm`` (legacy mode: legacy pixel units;
the same units for every object of a session, which is all a comparison needs).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.structures import CLASS_NAMES, ArmObject, Command

#: Where the arm starts its tour (planar coordinates of the base axis).
REST_XY_MM = (0.0, 0.0)
#: Bound on 2-opt sweeps (each sweep is O(n^2) reversals; convergence takes a few).
MAX_TWO_OPT_SWEEPS = 50
#: Least mean silhouette for item embeddings to count as grouped at all (else one group).
MIN_SILHOUETTE = 0.2
#: Up to this many moves the order is exact (Held-Karp dynamic programme, O(n^2 2^n)).
MAX_EXACT_MOVES = 9


def choose_n_clusters(
    n_items: int,
    n_containers: int,
    embeddings: np.ndarray | None = None,
    random_state: int = 0,
    n_init: int = 10,
    group_distance: float | None = None,
) -> int:
    """Number of item groups.

    Without ``embeddings``: one group per container, fewer if there are fewer items
    (docs/design.rst, Sorting semantics): ``min(n_items, n_containers)``.

    With ``embeddings``, when there are more containers than kinds of item, forcing
    ``min(n_items, n_containers)`` groups splits a kind across containers (which
    docs/design.rst's "sorted correctly" forbids). The number of groups is then chosen among
    ``2 .. min(n_items, n_containers)`` at the largest gap between successive merge
    heights of average-linkage clustering (scipy) under half the squared Euclidean
    distance, which for L2-normalised embeddings is their cosine distance (and adds the
    shape terms for the rows of :func:`item_features`): merges within
    a kind are short, merges across kinds long. It is 1 when the K-Means grouping of
    that size has a mean silhouette below :data:`MIN_SILHOUETTE` (no group structure).
    Limitation: with as many containers as items, one kind of item with scattered
    embeddings cannot be told from all-different kinds without an absolute distance
    scale, and gets one group per item.

    With ``group_distance`` (an absolute scale, calibrated for one embedder's weights:
    its sidecar's ``group_cosine_distance``, measured by ``sorterbot-cloud
    calibrate-grouping``), the number of groups is instead one plus the number of
    average-linkage merges above that cosine distance, clipped to
    ``1 .. min(n_items, n_containers)``: kinds are told apart by how far apart they are,
    not by the largest relative gap, which over-splits a kind whose items spread and
    under-splits kinds that lie close.

    Parameters
    ----------
    n_items, n_containers : int
        Non-negative counts.
    embeddings : ndarray of shape (n_items, D), float, optional
        The items' L2-normalised embeddings, or the rows of :func:`item_features`.
    random_state : int
        K-Means seed (deterministic result).
    n_init : int
        K-Means restarts.
    group_distance : float, optional
        Cosine distance (0..2) above which average-linkage merges separate kinds; None:
        the largest-gap rule.

    Returns
    -------
    int
        0 when either count is 0.

    Raises
    ------
    BadRequest
        If a count is negative, ``embeddings`` does not have ``n_items`` rows, or
        ``group_distance`` is not in (0, 2].
    """
    return _choose(n_items, n_containers, embeddings, random_state, n_init, group_distance)[0]


def group_items(
    n_containers: int, embeddings: np.ndarray, random_state: int = 0, n_init: int = 10, group_distance: float | None = None,
    n_groups: int | None = None,
) -> np.ndarray:
    """Item groups: :func:`choose_n_clusters` groups, found by K-Means (one K-Means run).

    Equal to ``sorterbot_cloud.embedding.cluster_embeddings(embeddings, choose_n_clusters(...))``, but
    the K-Means grouping that the silhouette check already made is reused instead of
    computed twice (the session trigger's clustering stage, about half its cost).

    Parameters
    ----------
    n_containers : int
        Non-negative.
    embeddings : ndarray of shape (n_items, D), float
        The items' L2-normalised embeddings, or the rows of :func:`item_features`.
    random_state, n_init : int
        K-Means seed and restarts.
    group_distance : float, optional
        See :func:`choose_n_clusters`.
    n_groups : int, optional
        Diagnostics: K-Means into this many groups (clipped to ``1 .. min(n_items,
        n_containers)``) instead of the number :func:`choose_n_clusters` chooses; with the
        true number of kinds this measures how well the features group once the number is
        right (``sorterbot-cloud evaluate-sessions --groups true-kinds``).

    Returns
    -------
    cluster_ids : ndarray of shape (n_items,), int64
        Group of each item, numbered by first occurrence; all 0 for one group.

    Raises
    ------
    BadRequest
        If ``n_containers`` is negative, ``embeddings`` is not 2-D, ``group_distance`` is
        not in (0, 2] or ``n_groups`` is < 1.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise BadRequest(f"embeddings must have shape (N, D), got {x.shape}")
    if n_groups is None:
        k, labels = _choose(len(x), n_containers, x, random_state, n_init, group_distance)
    else:
        if int(n_groups) < 1:
            raise BadRequest(f"n_groups must be >= 1, got {n_groups}")
        # choose_n_clusters without embeddings: the count checks and min(n_items, n_containers)
        k, labels = min(int(n_groups), choose_n_clusters(len(x), n_containers)), None
    if labels is not None:
        return labels
    if k <= 1:
        return np.zeros(len(x), np.int64)
    from sorterbot_cloud.embedding import cluster_embeddings

    return cluster_embeddings(x, k, random_state=random_state, n_init=n_init)


def _choose(n_items, n_containers, embeddings, random_state: int, n_init: int,
            group_distance: float | None = None) -> tuple[int, np.ndarray | None]:
    """:func:`choose_n_clusters` and the K-Means labels it computed on the way (or None)."""
    if int(n_items) < 0 or int(n_containers) < 0:
        raise BadRequest(f"counts must be >= 0, got n_items={n_items}, n_containers={n_containers}")
    if group_distance is not None and not 0.0 < float(group_distance) <= 2.0:
        raise BadRequest(f"group_distance must be a cosine distance in (0, 2], got {group_distance}")
    k_max = int(min(int(n_items), int(n_containers)))
    if embeddings is None or k_max <= 1:
        return k_max, None
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) != int(n_items):
        raise BadRequest(f"embeddings must have shape ({n_items}, D), got {x.shape}")
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist, squareform
    from sklearn.metrics import silhouette_score

    from sorterbot_cloud.embedding import cluster_embeddings

    # half the squared Euclidean distance: the cosine distance of L2-normalised
    # embeddings, plus the shape terms of item_features where they are appended
    distances = pdist(x, metric="sqeuclidean") / 2.0
    # merge heights of average-linkage clustering, ascending; k groups leave the top
    # k - 1 merges undone, so the gap below merge n - k separates them
    heights = np.concatenate([[0.0], linkage(distances, method="average")[:, 2]])
    n = len(x)
    if group_distance is not None:
        return int(np.clip(1 + np.count_nonzero(heights > float(group_distance)), 1, k_max)), None
    gaps = {k: heights[n - k + 1] - heights[n - k] for k in range(2, k_max + 1)}
    best_k = max(gaps, key=lambda k: (gaps[k], -k))
    if best_k == n:  # every item its own kind: silhouette is undefined, distances alone decide
        return best_k, None
    labels = cluster_embeddings(x, best_k, random_state=random_state, n_init=n_init)
    best_score = float(silhouette_score(squareform(distances), labels, metric="precomputed")) if len(np.unique(labels)) > 1 else -1.0
    return (best_k, labels) if best_score >= MIN_SILHOUETTE else (1, None)


#: Floor (mm) under fitted sizes and heights before their logarithm is taken in
#: :func:`item_features`: flat items (coins, washers) are fitted at 1..5 mm with errors of
#: a few mm, so ratios between heights below this floor carry no information.
SHAPE_FLOOR_MM = 4.0

#: CIELab units per unit of colour feature in :func:`item_features` (``L*`` spans 0..100).
LAB_SCALE = 100.0


def item_features(
    embeddings: np.ndarray,
    sizes_mm: np.ndarray | None = None,
    heights_mm: np.ndarray | None = None,
    size_weight: float = 0.0,
    height_weight: float = 0.0,
    colours_lab: np.ndarray | None = None,
    colour_weight: float = 0.0,
) -> np.ndarray:
    """What the items are grouped on: their embeddings, plus their physical shape and colour where known.

    The embedding of a crop sees colour, texture and silhouette, but not scale: a white
    die and a pale washer of similar size in pixels can embed close together while one
    stands 15 mm tall and the other 3 mm. In calibrated mode each item also has a size and
    height in millimetres (fitted to all its boxes, :func:`sorterbot_cloud.geometry.refine_objects <sorterbot_cloud.geometry.refine.refine_objects>`;
    in legacy mode through the reference camera, ``trigger.with_nominal_shapes``),
    which are appended as ``size_weight * log(size_mm)`` and ``height_weight * log(height_mm)``
    (both floored at :data:`SHAPE_FLOOR_MM`): half the squared Euclidean distance between
    two rows is then the cosine distance of their embeddings plus
    ``(size_weight**2 * dlog_size**2 + height_weight**2 * dlog_height**2) / 2``, the
    distance :func:`group_items` clusters on. With zero weights the rows are the embeddings
    alone (the trigger also leaves the shapes out in legacy mode when
    ``Settings.legacy_camera`` is ``none``: legacy box sizes are not metric).

    The embedder is trained on the training kinds and can miss a plain difference of
    colour between two unseen kinds (a white die and a black domino).
    With ``colour_weight > 0`` each item's median CIELab colour (:func:`sorterbot_cloud.embedding.colour.colour_lab`,
    averaged over the item's detections) is appended as ``colour_weight * (L*, a*, b*) / 100``:
    half the squared distance then gains ``colour_weight**2 * dE**2 / 2e4``, where ``dE``
    is the CIE76 colour difference (a just-noticeable difference is about 2.3).

    Parameters
    ----------
    embeddings : ndarray of shape (N, D), float
        L2-normalised item embeddings.
    sizes_mm, heights_mm : ndarray of shape (N,), float, optional
        Footprint diameter and height of each item (mm); required for a non-zero weight.
    size_weight, height_weight : float
        Non-negative weights (per unit of natural-log ratio), tuned together with the
        distance that splits kinds (``Settings.grouping_size_weight``, ``grouping_height_weight``,
        ``grouping_distance``).
    colours_lab : ndarray of shape (N, 3), float, optional
        CIELab colour of each item (``L*`` 0..100, ``a*``, ``b*``); required for a non-zero
        ``colour_weight``.
    colour_weight : float
        Non-negative weight per 100 units of CIELab (``Settings.grouping_colour_weight``).

    Returns
    -------
    ndarray of shape (N, D + k), float64
        ``k`` = number of non-zero shape weights (0..2), plus 3 with a non-zero colour weight.

    Raises
    ------
    BadRequest
        If a weight is negative or not finite, a needed array is missing, or the shapes disagree.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise BadRequest(f"embeddings must have shape (N, D), got {x.shape}")
    columns = [x]
    for name, values, weight in (("sizes_mm", sizes_mm, size_weight), ("heights_mm", heights_mm, height_weight)):
        if not (np.isfinite(weight) and weight >= 0):
            raise BadRequest(f"the weight of {name} must be a finite number >= 0, got {weight}")
        if weight == 0:
            continue
        if values is None:
            raise BadRequest(f"{name} is required with a non-zero weight")
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape != (len(x),) or not np.all(np.isfinite(v)):
            raise BadRequest(f"{name} must be {len(x)} finite values, got shape {v.shape}")
        columns.append(float(weight) * np.log(np.maximum(v, SHAPE_FLOOR_MM))[:, None])
    if not (np.isfinite(colour_weight) and colour_weight >= 0):
        raise BadRequest(f"the weight of colours_lab must be a finite number >= 0, got {colour_weight}")
    if colour_weight > 0:
        if colours_lab is None:
            raise BadRequest("colours_lab is required with a non-zero weight")
        c = np.asarray(colours_lab, dtype=np.float64)
        if c.shape != (len(x), 3) or not np.all(np.isfinite(c)):
            raise BadRequest(f"colours_lab must be ({len(x)}, 3) finite values, got shape {c.shape}")
        columns.append(float(colour_weight) * c / LAB_SCALE)
    return np.concatenate(columns, axis=1)


def _xy(objects: list[ArmObject]) -> np.ndarray:
    return np.array([[o.x_mm, o.y_mm] for o in objects], dtype=np.float64).reshape(-1, 2)


def assign_groups(items: list[ArmObject], containers: list[ArmObject], cluster_ids) -> dict[int, int]:
    """Assign each group to a container index with the least total carry distance.

    Parameters
    ----------
    items : list of ArmObject
    containers : list of ArmObject
    cluster_ids : array-like of shape (len(items),), int

    Returns
    -------
    dict
        ``cluster_id -> index into containers``.
    """
    labels = np.asarray(cluster_ids, dtype=np.int64).reshape(-1)
    groups = np.unique(labels)
    item_xy, cont_xy = _xy(items), _xy(containers)
    dist = np.linalg.norm(item_xy[:, None, :] - cont_xy[None, :, :], axis=2)  # (N items, M containers)
    cost = np.stack([dist[labels == g].sum(axis=0) for g in groups])  # (G, M)
    rows, cols = linear_sum_assignment(cost)
    assignment = {int(groups[r]): int(c) for r, c in zip(rows, cols, strict=True)}
    for r, g in enumerate(groups):  # more groups than containers: cheapest container
        if int(g) not in assignment:
            assignment[int(g)] = int(np.argmin(cost[r]))
    return assignment


def order_moves(pick_xy: np.ndarray, place_xy: np.ndarray, start_xy=REST_XY_MM) -> list[int]:
    """Order pick-and-place moves so that the empty runs are short.

    Parameters
    ----------
    pick_xy, place_xy : ndarray of shape (N, 2)
        Where move ``i`` picks and where it drops.
    start_xy : (float, float)
        Where the arm starts.

    Returns
    -------
    list of int
        A permutation of ``range(N)``: the shortest for ``N <= MAX_EXACT_MOVES``,
        else greedy nearest-neighbour improved by 2-opt.
    """
    pick_xy = np.asarray(pick_xy, float).reshape(-1, 2)
    place_xy = np.asarray(place_xy, float).reshape(-1, 2)
    n = len(pick_xy)
    if n == 0:
        return []
    start = np.asarray(start_xy, float)
    # run[i, j]: empty run from the drop of move i to the pick of move j; row n = start
    ends = np.vstack([place_xy, start[None]])
    run = np.linalg.norm(ends[:, None, :] - pick_xy[None, :, :], axis=2)  # (N + 1, N)

    if n <= MAX_EXACT_MOVES:
        return _held_karp(run)

    def tour_cost(order: list[int]) -> float:
        prev = [n] + order[:-1]
        return float(run[prev, order].sum())

    remaining = list(range(n))
    order: list[int] = []
    here = n
    while remaining:
        nxt = min(remaining, key=lambda j: (run[here, j], j))
        order.append(nxt)
        remaining.remove(nxt)
        here = nxt
    best = tour_cost(order)
    for _ in range(MAX_TWO_OPT_SWEEPS):
        improved = False
        for i in range(n - 1):
            for k in range(i + 1, n):
                candidate = order[:i] + order[i : k + 1][::-1] + order[k + 1 :]
                cost = tour_cost(candidate)
                if cost < best - 1e-9:
                    order, best, improved = candidate, cost, True
        if not improved:
            break
    return order


def _held_karp(run: np.ndarray) -> list[int]:
    """Shortest open path from the start (row ``n``) through all ``n`` nodes.

    Parameters
    ----------
    run : ndarray of shape (n + 1, n)
        ``run[i, j]``: cost of going to node ``j`` after node ``i`` (row ``n``: the start).

    Returns
    -------
    list of int
        The order of the nodes (ties: lowest index first).
    """
    n = run.shape[1]
    full = (1 << n) - 1
    dp = np.full((1 << n, n), np.inf)
    parent = np.full((1 << n, n), -1, dtype=np.int64)
    bits = 1 << np.arange(n)
    for j in range(n):
        dp[1 << j, j] = run[n, j]
    for mask in range(1, full + 1):
        js = np.nonzero(mask & bits)[0]
        if len(js) < 2:
            continue
        prev = mask ^ bits[js]  # (k,)
        cand = dp[prev] + run[:n, js].T  # (k, n): via predecessor i
        best_i = np.argmin(cand, axis=1)
        dp[mask, js] = cand[np.arange(len(js)), best_i]
        parent[mask, js] = best_i
    last = int(np.argmin(dp[full]))
    order, mask = [], full
    while last >= 0:
        order.append(last)
        nxt = int(parent[mask, last])
        mask ^= 1 << last
        last = nxt
    return order[::-1]


def plan(items: list[ArmObject], containers: list[ArmObject], cluster_ids) -> list[Command]:
    """Pick-and-place commands: every item exactly once, each group into one container.

    Parameters
    ----------
    items : list of ArmObject
        Items of the session.
    containers : list of ArmObject
        Containers of the session (drop targets).
    cluster_ids : array-like of shape (len(items),), int
        Group of each item (K-Means labels).

    Returns
    -------
    list of Command
        In execution order; empty when there is no item or no container.

    Raises
    ------
    BadRequest
        If ``cluster_ids`` does not hold one integer per item, or an object of the
        wrong class is passed.
    """
    labels = np.asarray(cluster_ids).reshape(-1) if cluster_ids is not None else np.zeros(0)
    if len(labels) != len(items):
        raise BadRequest(f"cluster_ids must hold one label per item: expected {len(items)}, got {len(labels)}")
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        raise BadRequest(f"cluster_ids must be integers, got dtype {labels.dtype}")
    for name, objs, class_id in (("items", items, 0), ("containers", containers, 1)):
        wrong = [o.object_id for o in objs if int(o.class_id) != class_id]
        if wrong:
            raise BadRequest(f"{name} must all be of class {CLASS_NAMES[class_id]!r}; objects {wrong} are not")
    if not items or not containers:
        return []
    labels = labels.astype(np.int64)
    assignment = assign_groups(items, containers, labels)
    target = [containers[assignment[int(g)]] for g in labels]
    order = order_moves(_xy(items), _xy(target))
    return [Command(item=items[i], container=target[i], cluster_id=int(labels[i])) for i in order]
