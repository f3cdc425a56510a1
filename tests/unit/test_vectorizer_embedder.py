"""Embedder: shapes, normalisation, batching, determinism, weights resolution order."""

import copy
import json
import logging

import numpy as np
import pytest
import torch

from sorterbot_cloud.config import Settings
from sorterbot_cloud.embedding import load_embedder
from sorterbot_cloud.embedding.embedder import (
    EMBEDDING_DIM,
    IMAGENET_INPUT_SIZE_PX,
    IMAGENET_RESNET18_FILE,
    Embedder,
    build_resnet18,
    resolve_weights,
)
from sorterbot_cloud.embedding.training import export_weights
from sorterbot_cloud.errors import BadRequest, InvalidImage

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return Embedder(build_resnet18(), input_size_px=32, batch_size=4)


def _crops(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(int(rng.integers(8, 60)), int(rng.integers(8, 60)), 3), dtype=np.uint8) for _ in range(n)]


def test_embed_shape_dtype_unit_norm(embedder):
    emb = embedder.embed(_crops(7))
    assert emb.shape == (7, EMBEDDING_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_embed_empty(embedder):
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)


def test_batched_equals_one_by_one_and_deterministic(embedder):
    crops = _crops(9, seed=1)  # 9 crops with batch_size 4: batches of 4, 4, 1
    batched = embedder.embed(crops)
    single = np.concatenate([embedder.embed([c]) for c in crops])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_array_equal(batched, embedder.embed(crops))


def test_different_crops_give_different_embeddings(embedder):
    red = np.zeros((30, 30, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((30, 30, 3), np.uint8)
    blue[..., 2] = 255
    a, b = embedder.embed([red, blue])
    assert np.dot(a, b) < 0.9999


@pytest.mark.parametrize(
    "crops, error, match",
    [
        (np.zeros((10, 10, 3), np.uint8), BadRequest, "sequence"),
        ([np.zeros((10, 10), np.uint8)], InvalidImage, "shape"),
        ([np.zeros((10, 10, 3), np.float64)], InvalidImage, "uint8"),
    ],
    ids=["single-array", "grey-crop", "float-crop"],
)
def test_embed_rejects_bad_crops(embedder, crops, error, match):
    with pytest.raises(error, match=match):
        embedder.embed(crops)


# ------------------------------------------------------------------ weights resolution


@pytest.fixture()
def weight_files(tmp_path):
    """A configured file, a torch cache with the ImageNet file, and a shipped file."""
    torch.manual_seed(1)
    state = build_resnet18().state_dict()
    configured = export_weights(state, tmp_path / "mine" / "custom.pt", {"input_size_px": 48})
    shipped = export_weights(state, tmp_path / "weights" / "embedder.pt", {"input_size_px": 64})
    cache = tmp_path / "hub"
    (cache / "checkpoints").mkdir(parents=True)
    imagenet_state = dict(state)
    imagenet_state["fc.weight"] = torch.zeros(1000, 512)  # classifier head, as in torchvision's file
    imagenet_state["fc.bias"] = torch.zeros(1000)
    torch.save(imagenet_state, cache / "checkpoints" / IMAGENET_RESNET18_FILE)
    return {"configured": configured, "shipped": shipped, "cache": cache, "state": state}


@pytest.mark.parametrize(
    "configured, with_cache, with_shipped, expected",
    [
        ("configured", True, True, "configured"),
        ("shipped", True, True, "shipped"),
        (None, True, True, "shipped"),
        (None, True, False, "torch-cache"),
        (None, False, True, "shipped"),
    ],
    ids=["configured-wins", "default-setting-is-the-shipped-file", "shipped-before-cache", "cache-without-shipped",
         "shipped-without-cache"],
)
def test_resolve_weights_order(weight_files, tmp_path, configured, with_cache, with_shipped, expected):
    cache = weight_files["cache"] if with_cache else tmp_path / "empty-hub"
    shipped = weight_files["shipped"] if with_shipped else tmp_path / "none.pt"
    arg = None if configured is None else weight_files[configured]
    choice = resolve_weights(arg, torch_cache_dir=cache, shipped=shipped)
    assert choice.source == expected
    expected_path = {"configured": weight_files["configured"], "shipped": weight_files["shipped"],
                     "torch-cache": weight_files["cache"] / "checkpoints" / IMAGENET_RESNET18_FILE}[expected]
    assert choice.path == expected_path


def test_resolve_weights_missing_configured_file_is_an_error(weight_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="configured embedder weights"):
        resolve_weights(tmp_path / "typo.pt", torch_cache_dir=weight_files["cache"], shipped=weight_files["shipped"])


def test_resolve_weights_nothing_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no embedder weights"):
        resolve_weights(None, torch_cache_dir=tmp_path, shipped=tmp_path / "embedder.pt")


def test_from_weights_reads_sidecar_and_fp16_state(weight_files):
    emb = Embedder.from_weights(weight_files["configured"])
    assert emb.input_size_px == 48
    assert json.loads(weight_files["configured"].with_suffix(".json").read_text())["embedding_dim"] == EMBEDDING_DIM
    reference = build_resnet18()
    reference.load_state_dict(weight_files["state"])
    crops = _crops(3, seed=2)
    np.testing.assert_allclose(emb.embed(crops), Embedder(reference, input_size_px=48).embed(crops), atol=2e-2)


def test_from_weights_imagenet_file_drops_fc_and_uses_its_input_size(weight_files):
    emb = Embedder.from_weights(weight_files["cache"] / "checkpoints" / IMAGENET_RESNET18_FILE, source="torch-cache")
    assert emb.input_size_px == IMAGENET_INPUT_SIZE_PX
    assert emb.embed(_crops(2)).shape == (2, EMBEDDING_DIM)


def test_from_weights_rejects_other_state_dicts(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a ResNet18"):
        Embedder.from_weights(path)


def test_load_embedder_uses_configured_path_and_logs_it(weight_files, caplog):
    settings = Settings(embedder_weights=weight_files["configured"], inference_runtime="torch")
    with caplog.at_level(logging.INFO, logger="sorterbot_cloud.embedding.embedder"):
        emb = load_embedder(settings)
    assert emb.source.startswith("configured:") and emb.input_size_px == 48
    assert "configured" in caplog.text and str(weight_files["configured"]) in caplog.text


@pytest.mark.parametrize("views", [2, 4, 8], ids=["flip", "flips", "dihedral"])
def test_test_time_views_are_orientation_invariant(views):
    torch.manual_seed(0)
    emb = Embedder(build_resnet18(), input_size_px=32, test_time_views=views)
    crop = _crops(1, seed=5)[0]
    a = emb.embed([crop])
    assert a.shape == (1, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    mirrored = emb.embed([np.ascontiguousarray(crop[:, ::-1])])
    np.testing.assert_allclose(a, mirrored, atol=1e-4)
    if views == 8:
        rotated = emb.embed([np.ascontiguousarray(np.rot90(crop))])
        np.testing.assert_allclose(a, rotated, atol=1e-4)


def test_test_time_views_must_be_a_symmetry_count():
    with pytest.raises(ValueError, match="test_time_views"):
        Embedder(build_resnet18(), test_time_views=3)


def test_focus_mask_profile():
    from sorterbot_cloud.embedding.embedder import focus_mask

    mask = focus_mask(64, (0.3, 0.5))
    assert mask.shape == (1, 1, 64, 64)
    assert float(mask[0, 0, 32, 32]) == 1.0 and float(mask[0, 0, 0, 0]) == 0.0
    assert 0.0 < float(mask[0, 0, 32, 3]) < 1.0  # r = 0.45 of the side: fading


def test_focus_ignores_the_corners():
    torch.manual_seed(0)
    emb = Embedder(build_resnet18(), input_size_px=64, focus_radii=(0.3, 0.5))
    crop = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    other = crop.copy()
    other[:8, :8] = 0  # corners lie beyond r = 0.5 of the side
    other[-8:, -8:] = 255
    np.testing.assert_array_equal(emb.embed([crop]), emb.embed([other]))
    plain = Embedder(emb.model, input_size_px=64)
    assert not np.array_equal(plain.embed([crop]), plain.embed([other]))


def test_focus_radii_come_from_the_sidecar(tmp_path):
    path = export_weights(build_resnet18().state_dict(), tmp_path / "e.pt", {"input_size_px": 32, "focus_radii": [0.2, 0.4]})
    assert Embedder.from_weights(path).focus_radii == (0.2, 0.4)
    with pytest.raises(ValueError, match="focus_radii"):
        Embedder(build_resnet18(), focus_radii=(0.5, 0.3))


def test_group_distance_comes_from_the_sidecar_and_is_absent_for_imagenet(tmp_path, weight_files):
    path = export_weights(build_resnet18().state_dict(), tmp_path / "g.pt", {"input_size_px": 32, "group_cosine_distance": 0.2})
    assert Embedder.from_weights(path).group_distance == 0.2
    assert Embedder.from_weights(weight_files["configured"]).group_distance is None
    assert Embedder.from_weights(weight_files["cache"] / "checkpoints" / IMAGENET_RESNET18_FILE).group_distance is None


def test_channels_last_embedder_matches_the_plain_one():
    """``channels_last=True`` (how weights files load): NHWC weights, same embeddings to float rounding."""
    torch.manual_seed(3)
    net = build_resnet18()
    plain = Embedder(copy.deepcopy(net), input_size_px=32)
    nhwc = Embedder(net, input_size_px=32, channels_last=True)
    assert nhwc.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    rng = np.random.default_rng(8)
    crops = [rng.integers(0, 256, (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3), dtype=np.uint8) for _ in range(5)]
    np.testing.assert_allclose(nhwc.embed(crops), plain.embed(crops), atol=1e-5)
