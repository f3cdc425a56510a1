"""cluster_embeddings and grouping ARI evaluation."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from sorterbot_cloud.embedding.clustering import canonical_labels, cluster_embeddings
from sorterbot_cloud.embedding.evaluation import all_crops_ari, grouping_aris
from sorterbot_cloud.errors import BadRequest


def _blobs(n_types=4, per_type=6, dim=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_types, dim))
    type_ids = np.repeat(np.arange(n_types), per_type)
    x = centres[type_ids] + spread * rng.normal(size=(len(type_ids), dim))
    order = rng.permutation(len(type_ids))
    return x[order].astype(np.float32), type_ids[order]


@pytest.mark.parametrize(
    "ids, expected",
    [([5, 5, 2, 7, 2], [0, 0, 1, 2, 1]), ([0, 1, 2], [0, 1, 2]), ([3, 3, 3], [0, 0, 0]), ([], [])],
    ids=["relabel", "already-canonical", "one-group", "empty"],
)
def test_canonical_labels(ids, expected):
    out = canonical_labels(np.array(ids, np.int64))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("n_types", [2, 3, 4], ids=["k2", "k3", "k4"])
def test_separable_blobs_are_recovered_in_canonical_order(n_types):
    x, type_ids = _blobs(n_types=n_types)
    ids = cluster_embeddings(x, n_types)
    assert ids.dtype == np.int64 and ids.shape == (len(x),)
    assert adjusted_rand_score(type_ids, ids) == pytest.approx(1.0)
    np.testing.assert_array_equal(ids, canonical_labels(ids))
    assert ids[0] == 0


def test_deterministic_across_calls():
    x = np.random.default_rng(3).normal(size=(40, 8)).astype(np.float32)  # no structure: restarts matter
    first = cluster_embeddings(x, 4, random_state=0, n_init=10)
    for _ in range(3):
        np.testing.assert_array_equal(cluster_embeddings(x, 4, random_state=0, n_init=10), first)


@pytest.mark.parametrize(
    "n, k, expected",
    [(0, 3, []), (1, 3, [0]), (3, 3, [0, 1, 2]), (2, 5, [0, 1]), (4, 1, [0, 0, 0, 0])],
    ids=["empty", "one-point", "k-equals-n", "k-above-n", "k-one"],
)
def test_small_inputs(n, k, expected):
    x = np.random.default_rng(0).normal(size=(n, 4))
    np.testing.assert_array_equal(cluster_embeddings(x, k), expected)


def test_identical_embeddings_with_more_clusters_than_distinct_points():
    x = np.repeat(np.eye(3)[:2], 3, axis=0)  # 6 rows, 2 distinct
    np.testing.assert_array_equal(cluster_embeddings(x, 4), [0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize(
    "x, k, n_init, match",
    [
        (np.zeros(5), 2, 10, r"\(N, D\)"),
        (np.full((4, 2), np.nan), 2, 10, "finite"),
        (np.zeros((4, 2)), 0, 10, "n_clusters"),
        (np.zeros((4, 2)), 2, 0, "n_init"),
    ],
    ids=["1-d", "nan", "zero-clusters", "zero-n-init"],
)
def test_rejects_bad_input(x, k, n_init, match):
    with pytest.raises(BadRequest, match=match):
        cluster_embeddings(x, k, n_init=n_init)


def test_grouping_aris_on_separable_data_is_perfect():
    x, type_ids = _blobs(n_types=5, per_type=10)
    aris = grouping_aris(x, type_ids, n_groupings=20, crops_per_type=4, seed=1)
    assert aris.shape == (20,)
    np.testing.assert_allclose(aris, 1.0)
    assert all_crops_ari(x, type_ids) == pytest.approx(1.0)


def test_grouping_aris_on_unstructured_data_is_low():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 16))
    type_ids = np.repeat(np.arange(5), 10)
    aris = grouping_aris(x, type_ids, n_groupings=30, crops_per_type=6, seed=1)
    assert aris.mean() < 0.3


def test_grouping_aris_is_reproducible_and_seed_dependent():
    x, type_ids = _blobs(n_types=5, per_type=10, spread=1.5)  # overlapping: ARIs vary per draw
    a = grouping_aris(x, type_ids, n_groupings=15, seed=4)
    np.testing.assert_array_equal(a, grouping_aris(x, type_ids, n_groupings=15, seed=4))
    assert not np.array_equal(a, grouping_aris(x, type_ids, n_groupings=15, seed=5))


@pytest.mark.parametrize(
    "type_ids, kwargs, match",
    [
        (np.zeros(10, int), {}, "at least 2 types"),
        (np.repeat([0, 1], 5), {"min_types": 1}, "min_types"),
        (np.repeat([0, 1], 4), {}, "must agree"),
    ],
    ids=["one-type", "min-types-1", "length-mismatch"],
)
def test_grouping_aris_rejects_bad_input(type_ids, kwargs, match):
    with pytest.raises(BadRequest, match=match):
        grouping_aris(np.zeros((10, 4)), type_ids, **kwargs)


@pytest.mark.parametrize(
    "clusters, types, n_containers, expected",
    [
        ([0, 0, 1, 1], [5, 5, 7, 7], 2, True),
        ([0, 1, 1, 1], [5, 5, 7, 7], 2, False),  # type 5 split
        ([0, 0, 0, 0], [5, 5, 7, 7], 2, False),  # two types share while a container is spare
        ([0, 0, 0, 1], [5, 5, 7, 8], 2, True),  # three types, two containers: similar types share
        ([0, 0, 0, 0], [5, 5, 7, 7], 1, True),
    ],
    ids=["exact", "split", "merged-with-room", "fewer-containers", "one-container"],
)
def test_sorted_correctly_follows_design_rule(clusters, types, n_containers, expected):
    from sorterbot_cloud.embedding.evaluation import sorted_correctly

    assert sorted_correctly(np.array(clusters), np.array(types), n_containers) is expected


def test_grouping_choice_shares_rank_the_rules():
    from sorterbot_cloud.embedding.evaluation import grouping_choice_shares

    x, type_ids = _blobs(n_types=5, per_type=10, spread=0.05, seed=3)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    shares = grouping_choice_shares(x, type_ids, [0.2, 1.9], n_trials=40, seed=2)
    assert set(shares) == {"gap", "d=0.2", "d=1.9", "oracle_k"}
    assert shares["oracle_k"] == 1.0  # separable kinds, the right number of groups
    assert shares["d=0.2"] == 1.0  # kinds are far apart, items of a kind close
    assert shares["d=1.9"] < 0.5  # a bar no merge reaches: one group, which is wrong unless one container
    again = grouping_choice_shares(x, type_ids, [0.2, 1.9], n_trials=40, seed=2)
    assert again == shares
    with pytest.raises(BadRequest, match="2 types"):
        grouping_choice_shares(x[type_ids == 0], type_ids[type_ids == 0], [0.2])
