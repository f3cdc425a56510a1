"""Weight averages of detector files (sorterbot_cloud.detection.average, ``average-detectors``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sorterbot_cloud.detection.average import average_detector_files
from sorterbot_cloud.detection.cli import average_detectors_command
from sorterbot_cloud.detection.torchvision_detector import DetectorConfig, TorchvisionDetector

torch.set_num_threads(1)

TINY = DetectorConfig(backbone="mobilenet_v3_small", fpn_channels=32, box_head_units=64, min_size_px=96,
                      max_size_px=160, anchor_sizes_px=((8, 12, 16), (24, 32, 48), (64, 96, 128), (160, 200, 256)))


@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    """Two tiny detectors of one architecture with different random weights (seeds 0 and 1)."""
    folder = tmp_path_factory.mktemp("soup")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(TorchvisionDetector.untrained(TINY).save(folder / f"d{seed}.pt", {"recipe": f"seed {seed}"}))
    return paths


def _sd(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_weighted_mean_of_float_tensors_keeps_dtype_and_integer_tensors(two_files):
    a, b = _sd(two_files[0]), _sd(two_files[1])
    blob = average_detector_files([(two_files[0], 3.0), (two_files[1], 1.0)])  # normalised to 0.75 / 0.25
    name = next(k for k, v in a.items() if v.is_floating_point() and v.ndim == 4 and not torch.equal(v, b[k]))
    expected = 0.75 * a[name].float() + 0.25 * b[name].float()
    got = blob["state_dict"][name]
    assert got.dtype == a[name].dtype == torch.float16
    np.testing.assert_allclose(got.float().numpy(), expected.numpy(), atol=2e-3)
    ints = [k for k, v in a.items() if not v.is_floating_point()]
    assert ints and all(torch.equal(blob["state_dict"][k], a[k]) for k in ints)
    assert blob["config"] == TINY.to_dict()
    assert blob["format"] == torch.load(two_files[0], weights_only=True)["format"]


def test_only_prefixes_take_the_rest_from_the_first_file(two_files):
    a, b = _sd(two_files[0]), _sd(two_files[1])
    blob = average_detector_files([(two_files[0], 0.0), (two_files[1], 1.0)], prefixes=["roi_heads."])
    for k, v in blob["state_dict"].items():
        source = b if (k.startswith("roi_heads.") and v.is_floating_point()) else a
        assert torch.equal(v, source[k]), k


def test_bad_inputs_are_refused(two_files, tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        average_detector_files([])
    with pytest.raises(ValueError, match="weights"):
        average_detector_files([(two_files[0], -1.0), (two_files[1], 1.0)])
    with pytest.raises(ValueError, match="weights"):
        average_detector_files([(two_files[0], 0.0), (two_files[1], 0.0)])
    with pytest.raises(ValueError, match="matches no tensor"):
        average_detector_files([(two_files[0], 1.0)], prefixes=["no_such_layer."])
    other = TorchvisionDetector.untrained(DetectorConfig(backbone="mobilenet_v3_small", fpn_channels=16,
                                                         box_head_units=64, min_size_px=96, max_size_px=160,
                                                         anchor_sizes_px=TINY.anchor_sizes_px)).save(tmp_path / "o.pt")
    with pytest.raises(ValueError, match="config"):
        average_detector_files([(two_files[0], 1.0), (other, 1.0)])
    torch.save({"state_dict": {}}, tmp_path / "not_a_detector.pt")
    with pytest.raises(ValueError, match="not a"):
        average_detector_files([(tmp_path / "not_a_detector.pt", 1.0)])
    with pytest.raises(FileNotFoundError):
        average_detector_files([(tmp_path / "missing.pt", 1.0)])


def test_command_writes_a_loadable_detector_and_its_provenance(two_files, tmp_path):
    out = tmp_path / "avg" / "detector.pt"
    runner = CliRunner()
    res = runner.invoke(average_detectors_command, ["--input", f"{two_files[0]}:0.5", "--input", str(two_files[1]),
                                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    detector = TorchvisionDetector.load(out)
    assert detector.config.to_dict() == TINY.to_dict()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["recipe"] == "seed 0"
    assert [i["weight"] for i in meta["averaged_from"]["inputs"]] == [0.5, 1.0]
    res = runner.invoke(average_detectors_command, ["--input", f"{two_files[0]}:half", "--out", str(out)])
    assert res.exit_code == 2 and "must be a number" in res.output
