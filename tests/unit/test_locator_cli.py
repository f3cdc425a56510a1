"""The detector's click commands on tiny inputs (no shipped weights needed)."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from sorterbot_cloud.detection.cli import bench_detector, convert_voc, evaluate_detector, merge_coco_command
from sorterbot_cloud.detection.torchvision_detector import DetectorConfig, TorchvisionDetector
from sorterbot_cloud.detection.toydata import write_toy_coco

torch.set_num_threads(1)

TINY = DetectorConfig(backbone="mobilenet_v3_small", fpn_channels=32, box_head_units=64, min_size_px=96,
                      max_size_px=160, anchor_sizes_px=((8, 12, 16), (24, 32, 48), (64, 96, 128), (160, 200, 256)))


def test_bench_reports_medians_without_reference():
    lines = []
    result = bench_detector(None, n_frames=1, repeats=1, reference=False, width_px=320, height_px=240,
                            echo=lines.append)
    assert result["ours_ms_median"] > 0 and result["ours_cpu_ms_median"] > 0
    assert result["reference_ms_median"] is None and result["frame_size"] == [320, 240]
    assert "ms/frame" in lines[0]


def test_bench_times_a_baseline_file_in_the_same_run(tmp_path):
    ours = TorchvisionDetector.untrained(TINY).save(tmp_path / "ours.pt")
    base = TorchvisionDetector.untrained(TINY).save(tmp_path / "base.pt")
    lines = []
    result = bench_detector(ours, n_frames=2, repeats=2, reference=False, width_px=160, height_px=120,
                            echo=lines.append, baseline_weights=base)
    assert result["baseline_ms_median"] > 0
    assert result["ratio_to_baseline"] == result["ours_ms_median"] / result["baseline_ms_median"]
    assert any("ours / baseline" in line for line in lines)


def test_evaluate_command_writes_report_and_sidecar_metrics(tmp_path):
    ann = write_toy_coco(tmp_path / "toy", n_images=3, seed=4)
    weights = TorchvisionDetector.untrained(TINY).save(tmp_path / "det.pt", {"recipe": "test"})
    out = tmp_path / "eval"
    res = CliRunner().invoke(evaluate_detector, ["--weights", str(weights), "--dataset", f"{ann}:{ann.parent}",
                                                 "--out", str(out), "--name", "toy"])
    assert res.exit_code == 0, res.output
    assert (out / "pr_curve.png").is_file() and (out / "confusion_matrix.png").is_file()
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["recipe"] == "test" and sidecar["metrics"]["toy"]["images"] == 3


def test_convert_and_merge_commands(tmp_path):
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "a.xml").write_text(
        "<annotation><size><width>80</width><height>60</height></size><object><name>board</name>"
        "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object></annotation>")
    runner = CliRunner()
    res = runner.invoke(convert_voc, ["--xml-dir", str(tmp_path / "voc"), "--out", str(tmp_path / "a.json")])
    assert res.exit_code == 0 and "1 images, 1 boxes" in res.output
    res = runner.invoke(merge_coco_command, [f"{tmp_path / 'a.json'}:{tmp_path / 'voc'}",
                                             f"{tmp_path / 'a.json'}:{tmp_path / 'voc'}", "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 0 and "2 images, 2 boxes" in res.output
