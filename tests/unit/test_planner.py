"""Planner: groups to containers by least carry (Hungarian), short move order."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sorterbot_cloud import planner
from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.structures import CONTAINER_CLASS_ID, ITEM_CLASS_ID, ArmObject, PolarPoint


def obj(object_id: int, x: float, y: float, class_id: int = ITEM_CLASS_ID) -> ArmObject:
    r, t = math.hypot(x, y), math.degrees(math.atan2(y, x))
    return ArmObject(object_id, class_id, PolarPoint(r, t, 1475 + t * 1400 / 130, 1200 + r), x, y, 30.0, 0.9, [object_id])


def carry_cost(items, containers, labels, assignment) -> float:
    return sum(math.hypot(i.x_mm - containers[assignment[int(g)]].x_mm, i.y_mm - containers[assignment[int(g)]].y_mm) for i, g in zip(items, labels, strict=True))


@pytest.mark.parametrize(
    "n_items, n_containers, expected", [(5, 3, 3), (2, 4, 2), (0, 3, 0), (4, 0, 0), (3, 3, 3)], ids=["more-items", "fewer-items", "no-items", "no-containers", "equal"]
)
def test_choose_n_clusters(n_items, n_containers, expected):
    assert planner.choose_n_clusters(n_items, n_containers) == expected


def test_choose_n_clusters_rejects_negative():
    with pytest.raises(BadRequest, match="counts"):
        planner.choose_n_clusters(-1, 2)


@pytest.mark.parametrize("n_items, n_containers", [(0, 2), (3, 0), (0, 0)], ids=["no-items", "no-containers", "nothing"])
def test_empty_inputs_give_no_commands(n_items, n_containers):
    items = [obj(i, 200 + 10 * i, 0) for i in range(n_items)]
    containers = [obj(10 + j, 300, 100 * j, CONTAINER_CLASS_ID) for j in range(n_containers)]
    assert planner.plan(items, containers, np.zeros(n_items, np.int64)) == []


def test_hungarian_beats_greedy_assignment():
    """Greedy (cheapest pair first) sends group 0 to container A and group 1 far away to B;
    the optimal assignment swaps them."""
    containers = [obj(10, 300, 0, CONTAINER_CLASS_ID), obj(11, 300, 100, CONTAINER_CLASS_ID)]
    items = [obj(0, 300, 40), obj(1, 300, 40), obj(2, 300, -200), obj(3, 300, -200)]
    labels = np.array([0, 0, 1, 1])
    assignment = planner.assign_groups(items, containers, labels)
    assert assignment == {0: 1, 1: 0}


@pytest.mark.parametrize("seed", range(5), ids=lambda s: f"seed{s}")
def test_assignment_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_containers = int(rng.integers(2, 5))
    containers = [obj(100 + j, *rng.uniform(-300, 300, 2), CONTAINER_CLASS_ID) for j in range(n_containers)]
    n_groups = int(rng.integers(1, n_containers + 1))
    labels = np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, 6)])
    items = [obj(i, *rng.uniform(-300, 300, 2)) for i in range(len(labels))]
    got = carry_cost(items, containers, labels, planner.assign_groups(items, containers, labels))
    best = min(
        carry_cost(items, containers, labels, dict(enumerate(perm))) for perm in itertools.permutations(range(n_containers), n_groups)
    )
    assert got == pytest.approx(best)


@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed{s}")
def test_every_item_gets_exactly_one_command_and_groups_stay_together(seed):
    rng = np.random.default_rng(seed)
    containers = [obj(100 + j, *rng.uniform(-300, 300, 2), CONTAINER_CLASS_ID) for j in range(3)]
    items = [obj(i, *rng.uniform(-300, 300, 2)) for i in range(8)]
    labels = rng.integers(0, 3, len(items))
    commands = planner.plan(items, containers, labels)
    assert sorted(c.item.object_id for c in commands) == list(range(8))
    for g in np.unique(labels):
        assert len({c.container.object_id for c in commands if c.cluster_id == g}) == 1
    assert len({c.container.object_id for c in commands}) == len(np.unique(labels))


def _tour(commands) -> float:
    here, total = np.zeros(2), 0.0
    for c in commands:
        total += math.hypot(c.item.x_mm - here[0], c.item.y_mm - here[1])
        here = np.array([c.container.x_mm, c.container.y_mm])
    return total


@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed{s}")
def test_move_order_is_shortest_and_not_above_nearest_neighbour(seed):
    rng = np.random.default_rng(10 + seed)
    containers = [obj(100 + j, *rng.uniform(-300, 300, 2), CONTAINER_CLASS_ID) for j in range(2)]
    items = [obj(i, *rng.uniform(-300, 300, 2)) for i in range(6)]
    labels = rng.integers(0, 2, len(items))
    commands = planner.plan(items, containers, labels)
    pick = np.array([[c.item.x_mm, c.item.y_mm] for c in commands])
    place = np.array([[c.container.x_mm, c.container.y_mm] for c in commands])
    best = min(_tour([commands[i] for i in perm]) for perm in itertools.permutations(range(len(commands))))
    assert _tour(commands) == pytest.approx(best)  # exact up to MAX_EXACT_MOVES
    # 2-opt never ends above its greedy start
    greedy_order = []
    here, left = None, list(range(len(commands)))
    ends = np.vstack([place, [0, 0]])
    here = len(commands)
    while left:
        nxt = min(left, key=lambda j: (np.linalg.norm(ends[here] - pick[j]), j))
        greedy_order.append(nxt)
        left.remove(nxt)
        here = nxt
    assert _tour(commands) <= _tour([commands[i] for i in greedy_order]) + 1e-9


def test_plan_is_deterministic():
    rng = np.random.default_rng(3)
    containers = [obj(100 + j, *rng.uniform(-300, 300, 2), CONTAINER_CLASS_ID) for j in range(3)]
    items = [obj(i, *rng.uniform(-300, 300, 2)) for i in range(7)]
    labels = rng.integers(0, 3, 7)
    a = [c.to_wire() for c in planner.plan(items, containers, labels)]
    b = [c.to_wire() for c in planner.plan(items, containers, labels)]
    assert a == b


@pytest.mark.parametrize(
    "labels, match",
    [(np.array([0, 1]), "one label per item"), (np.array([0.5, 1.0, 0.0]), "integers")],
    ids=["wrong-length", "float-labels"],
)
def test_bad_cluster_ids_raise(labels, match):
    items = [obj(i, 200, 10 * i) for i in range(3)]
    containers = [obj(10, 300, 0, CONTAINER_CLASS_ID)]
    with pytest.raises(BadRequest, match=match):
        planner.plan(items, containers, labels)


def test_wrong_class_raises():
    with pytest.raises(BadRequest, match="containers must all be of class 'container'"):
        planner.plan([obj(0, 200, 0)], [obj(1, 300, 0)], np.zeros(1, np.int64))


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed{s}")
def test_long_sessions_use_two_opt_not_above_greedy(seed):
    rng = np.random.default_rng(30 + seed)
    n = planner.MAX_EXACT_MOVES + 4
    pick, place = rng.uniform(-300, 300, (n, 2)), rng.uniform(-300, 300, (n, 2))
    order = planner.order_moves(pick, place)
    assert sorted(order) == list(range(n))

    def cost(o):
        here, total = np.zeros(2), 0.0
        for i in o:
            total += np.linalg.norm(pick[i] - here)
            here = place[i]
        return total

    ends, here, left, greedy = np.vstack([place, [0, 0]]), n, list(range(n)), []
    while left:
        nxt = min(left, key=lambda j: (np.linalg.norm(ends[here] - pick[j]), j))
        greedy.append(nxt)
        left.remove(nxt)
        here = nxt
    assert cost(order) <= cost(greedy) + 1e-9


def _typed_embeddings(rng, counts, spread=0.1, dim=32):
    """Unit embeddings of items of well-separated kinds (orthonormal kind centres)."""
    centres = np.linalg.qr(rng.normal(size=(dim, len(counts))))[0].T
    rows = [centres[t] + rng.normal(0, spread, dim) for t, n in enumerate(counts) for _ in range(n)]
    x = np.array(rows)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "counts, n_containers, expected",
    [((3, 3), 4, 2), ((2, 3, 2), 4, 3), ((2, 2, 2, 2), 4, 4), ((3, 3, 2), 2, 2)],
    ids=["2-types-4-containers", "3-types-4-containers", "4-types-4-containers", "3-types-2-containers"],
)
def test_choose_n_clusters_from_embeddings_does_not_split_types(counts, n_containers, expected):
    x = _typed_embeddings(np.random.default_rng(sum(counts)), counts)
    assert planner.choose_n_clusters(len(x), n_containers, x) == expected


def test_choose_n_clusters_without_structure_gives_one_group():
    # one kind only: isotropic noise around one direction, no group structure
    x = _typed_embeddings(np.random.default_rng(0), (6,), spread=1.0)
    assert planner.choose_n_clusters(6, 3, x) == 1


def test_choose_n_clusters_rejects_misshaped_embeddings():
    with pytest.raises(BadRequest, match="embeddings must have shape"):
        planner.choose_n_clusters(3, 2, np.zeros((2, 8)))


@pytest.mark.parametrize("counts, expected", [((2, 1, 1), 3), ((1, 1, 1, 1), 4), ((2, 2), 2)], ids=["3-kinds-4-items", "4-kinds-4-items", "2-kinds-4-items"])
def test_choose_n_clusters_with_as_many_containers_as_items(counts, expected):
    x = _typed_embeddings(np.random.default_rng(7), counts)
    assert planner.choose_n_clusters(len(x), len(x), x) == expected


@pytest.mark.parametrize(
    "counts, n_containers, spread",
    [((3, 3), 4, 0.1), ((2, 3, 2), 4, 0.1), ((3, 3, 2), 2, 0.1), ((6,), 3, 1.0), ((1, 1, 1, 1), 4, 0.1), ((4, 4), 1, 0.1)],
    ids=["2-types", "3-types", "fewer-containers", "no-structure", "all-different", "one-container"],
)
def test_group_items_equals_k_means_on_the_chosen_number_of_groups(counts, n_containers, spread):
    """One K-Means run in the trigger gives the grouping the two-step recipe gave."""
    from sorterbot_cloud.embedding import cluster_embeddings

    x = _typed_embeddings(np.random.default_rng(len(counts) + n_containers), counts, spread=spread)
    k = planner.choose_n_clusters(len(x), n_containers, x, random_state=3, n_init=5)
    expected = cluster_embeddings(x, k, random_state=3, n_init=5) if k > 1 else np.zeros(len(x), np.int64)
    labels = planner.group_items(n_containers, x, random_state=3, n_init=5)
    assert labels.dtype == np.int64 and labels.tolist() == expected.tolist()
    assert len(set(labels.tolist())) == max(1, k)


def _two_kinds_at_distance(cos_distance: float, n_per_kind: int = 3, dim: int = 16) -> np.ndarray:
    """Two kinds whose items are identical within a kind and ``cos_distance`` apart across kinds."""
    a = np.zeros(dim)
    a[0] = 1.0
    b = np.zeros(dim)
    b[0], b[1] = 1.0 - cos_distance, np.sqrt(1.0 - (1.0 - cos_distance) ** 2)
    return np.array([a] * n_per_kind + [b] * n_per_kind)


@pytest.mark.parametrize("cos_distance, expected", [(0.3, 2), (0.1, 1)], ids=["kinds-farther-than-the-bar", "kinds-closer-than-the-bar"])
def test_group_distance_decides_whether_two_kinds_are_two_groups(cos_distance, expected):
    x = _two_kinds_at_distance(cos_distance)
    assert planner.choose_n_clusters(len(x), 4, x, group_distance=0.2) == expected
    labels = planner.group_items(4, x, group_distance=0.2)
    assert len(set(labels.tolist())) == expected
    if expected == 2:
        assert labels[:3].tolist() == [labels[0]] * 3 and labels[3:].tolist() == [labels[3]] * 3 and labels[0] != labels[3]


def test_group_distance_counts_kinds_and_is_clipped_to_the_containers():
    x = _typed_embeddings(np.random.default_rng(11), (2, 2, 2, 2), spread=0.05)  # four orthogonal kinds
    assert planner.choose_n_clusters(len(x), 4, x, group_distance=0.2) == 4
    assert planner.choose_n_clusters(len(x), 3, x, group_distance=0.2) == 3
    assert planner.choose_n_clusters(len(x), 1, x, group_distance=0.2) == 1


def test_group_distance_splits_a_spread_kind_less_than_the_gap_rule():
    # one kind whose items spread a little (cosine distances of a few hundredths): on this
    # draw the largest relative gap (and a silhouette above its bar) splits it in three,
    # an absolute bar of 0.2 keeps it whole
    x = _typed_embeddings(np.random.default_rng(0), (6,), spread=0.05)
    assert planner.choose_n_clusters(6, 3, x) == 3
    assert planner.choose_n_clusters(6, 3, x, group_distance=0.2) == 1


@pytest.mark.parametrize("bad", [0.0, -0.1, 2.5])
def test_group_distance_must_be_a_cosine_distance(bad):
    x = _two_kinds_at_distance(0.3)
    with pytest.raises(BadRequest, match="group_distance"):
        planner.choose_n_clusters(len(x), 3, x, group_distance=bad)


def test_item_features_without_weights_are_the_embeddings():
    x = _typed_embeddings(np.random.default_rng(3), (2, 2))
    np.testing.assert_array_equal(planner.item_features(x), x)
    np.testing.assert_array_equal(planner.item_features(x, np.ones(4) * 20, np.ones(4) * 5, 0.0, 0.0), x)


def test_item_features_append_weighted_log_shape_floored():
    x = _typed_embeddings(np.random.default_rng(4), (3,))
    f = planner.item_features(x, np.array([20.0, 40.0, 1.0]), np.array([10.0, 2.0, 30.0]), size_weight=2.0, height_weight=0.5)
    assert f.shape == (3, x.shape[1] + 2)
    np.testing.assert_allclose(f[:, -2], 2.0 * np.log([20.0, 40.0, planner.SHAPE_FLOOR_MM]))
    np.testing.assert_allclose(f[:, -1], 0.5 * np.log([10.0, planner.SHAPE_FLOOR_MM, 30.0]))
    only_height = planner.item_features(x, None, np.array([10.0, 2.0, 30.0]), 0.0, 1.0)
    assert only_height.shape == (3, x.shape[1] + 1)


def test_item_features_append_scaled_colour_so_distance_follows_cie76():
    x = _typed_embeddings(np.random.default_rng(6), (2,))
    colours = np.array([[90.0, 0.0, 0.0], [20.0, 5.0, -5.0]])
    f = planner.item_features(x, colours_lab=colours, colour_weight=2.0)
    assert f.shape == (2, x.shape[1] + 3)
    np.testing.assert_allclose(f[:, -3:], 2.0 * colours / planner.LAB_SCALE)
    # half the squared distance = cosine distance + w**2 * dE**2 / 2e4
    cosine = 1.0 - float(x[0] @ x[1])
    d_e = float(np.linalg.norm(colours[0] - colours[1]))
    np.testing.assert_allclose(0.5 * np.sum((f[0] - f[1]) ** 2), cosine + 4.0 * d_e**2 / 2e4, rtol=1e-6)
    # colour after the shape columns; a zero weight leaves it out even when given
    both = planner.item_features(x, np.array([20.0, 40.0]), None, 1.0, 0.0, colours, 1.0)
    assert both.shape == (2, x.shape[1] + 4)
    np.testing.assert_allclose(both[:, -4], np.log([20.0, 40.0]))
    np.testing.assert_array_equal(planner.item_features(x, colours_lab=colours, colour_weight=0.0), x)


@pytest.mark.parametrize("kwargs, match", [
    ({"colour_weight": 1.0}, "colours_lab is required"),
    ({"colour_weight": -0.5, "colours_lab": np.zeros((4, 3))}, "weight of colours_lab"),
    ({"colour_weight": 1.0, "colours_lab": np.zeros((4, 2))}, r"colours_lab must be \(4, 3\)"),
    ({"colour_weight": 1.0, "colours_lab": np.full((4, 3), np.nan)}, "finite"),
], ids=["missing", "negative", "wrong-shape", "nan"])
def test_item_features_reject_bad_colours(kwargs, match):
    x = _typed_embeddings(np.random.default_rng(7), (2, 2))
    with pytest.raises(BadRequest, match=match):
        planner.item_features(x, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"size_weight": -1.0, "sizes_mm": np.ones(4)}, "weight of sizes_mm"),
    ({"height_weight": float("nan"), "heights_mm": np.ones(4)}, "weight of heights_mm"),
    ({"size_weight": 1.0}, "sizes_mm is required"),
    ({"height_weight": 1.0, "heights_mm": np.ones(3)}, "heights_mm must be 4"),
    ({"size_weight": 1.0, "sizes_mm": np.array([1.0, np.inf, 1.0, 1.0])}, "sizes_mm must be 4 finite"),
], ids=["negative", "nan-weight", "missing", "short", "infinite"])
def test_item_features_reject_bad_input(kwargs, match):
    x = _typed_embeddings(np.random.default_rng(5), (2, 2))
    with pytest.raises(BadRequest, match=match):
        planner.item_features(x, **kwargs)


def test_shape_separates_kinds_that_embed_alike():
    """Two kinds the embedder cannot tell apart (a pale die and a pale washer, say), one
    15 mm tall and one 3 mm flat: one group on embeddings alone, two with the height."""
    x = _two_kinds_at_distance(0.05)  # closer than the bar of 0.2
    heights = np.array([15.0, 16.0, 14.0, 3.0, 3.5, 2.5])
    sizes = np.array([22.0, 23.0, 21.0, 28.0, 29.0, 28.0])
    assert len(set(planner.group_items(4, x, group_distance=0.2).tolist())) == 1
    labels = planner.group_items(4, planner.item_features(x, sizes, heights, 1.5, 1.0), group_distance=0.2)
    assert labels[:3].tolist() == [labels[0]] * 3 and labels[3:].tolist() == [labels[3]] * 3 and labels[0] != labels[3]


def test_grouping_distance_of_unit_rows_is_the_cosine_distance():
    """Half the squared Euclidean distance the planner clusters on equals the cosine
    distance for L2-normalised rows, so group_distance keeps its calibrated meaning."""
    from scipy.spatial.distance import pdist

    x = _typed_embeddings(np.random.default_rng(6), (3, 3), spread=0.3)
    np.testing.assert_allclose(pdist(x, "sqeuclidean") / 2, pdist(x, "cosine"), atol=1e-12)


@pytest.mark.parametrize("n_groups, n_containers, expected", [(2, 4, 2), (1, 4, 1), (4, 4, 4), (9, 2, 2)],
                         ids=["fewer", "one", "more", "clipped-to-containers"])
def test_group_items_with_a_forced_number_of_groups(n_groups, n_containers, expected):
    """``n_groups`` (the diagnostic) replaces the chosen number: K-Means into that many
    groups, clipped to the containers; the distance rule alone finds the 3 kinds here."""
    from sorterbot_cloud.embedding import cluster_embeddings

    x = _typed_embeddings(np.random.default_rng(5), (2, 2, 2), spread=0.02)
    assert planner.choose_n_clusters(len(x), 4, x, group_distance=0.15) == 3
    labels = planner.group_items(n_containers, x, random_state=0, n_init=5, group_distance=0.15, n_groups=n_groups)
    assert labels.dtype == np.int64 and len(set(labels.tolist())) == expected
    if expected > 1:
        assert labels.tolist() == cluster_embeddings(x, expected, random_state=0, n_init=5).tolist()


def test_group_items_rejects_a_number_of_groups_below_one():
    with pytest.raises(BadRequest, match="n_groups must be >= 1"):
        planner.group_items(2, np.eye(3), n_groups=0)
