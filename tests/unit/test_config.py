from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from sorterbot_cloud import dedup
from sorterbot_cloud.config import DEFAULT_CONFIG_FILE, PROJECT_ROOT, Settings
from sorterbot_cloud.detection.torchvision_detector import DetectorConfig
from sorterbot_cloud.embedding.crops import DEFAULT_MARGIN


def test_environment_overrides_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mode: aws-dev\ndetector_score_threshold: 0.3\n")
    s = Settings.load(cfg, environ={"DETECTOR_SCORE_THRESHOLD": "0.7", "PG_CONN": "postgresql://x"})
    assert s.mode == "aws-dev" and s.detector_score_threshold == 0.7 and s.pg_conn == "postgresql://x"


def test_overrides_win_and_relative_paths_resolve_to_project(tmp_path):
    s = Settings.load(tmp_path / "missing.yaml", environ={"MODE": "production"}, mode="local", data_dir="v2")
    assert s.mode == "local" and s.data_dir == PROJECT_ROOT / "v2"
    assert s.image_dir == PROJECT_ROOT / "v2" / "images"
    assert Settings.load(tmp_path / "m.yaml", environ={}, data_dir=str(tmp_path)).data_dir == Path(tmp_path)


@pytest.mark.parametrize(
    "text, environ, match",
    [("bogus: 1\n", {}, "unknown settings"), ("", {"MODE": "cloud"}, "MODE must be one of"), ("- 1\n", {}, "mapping"),
     ("", {"TORCH_THREADS": "0"}, "TORCH_THREADS must be >= 1")],
    ids=["unknown-key", "bad-mode", "not-mapping", "zero-threads"],
)
def test_bad_settings_are_rejected(tmp_path, text, environ, match):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=match):
        Settings.load(cfg, environ=environ)


def test_repository_config_file_loads():
    s = Settings.load(environ={})
    assert s.mode == "local" and s.detector_weights.name == "detector.pt"


@pytest.mark.parametrize("raw, expected", [("1", True), ("false", False), ("yes", True)], ids=str)
def test_log_json_from_environment_is_boolean(tmp_path, raw, expected):
    assert Settings.load(tmp_path / "m.yaml", environ={"LOG_JSON": raw}).log_json is expected


def test_torch_threads_from_environment_is_an_integer_and_defaults_to_none(tmp_path):
    assert Settings.load(tmp_path / "m.yaml", environ={"TORCH_THREADS": "1"}).torch_threads == 1
    assert Settings.load(tmp_path / "m.yaml", environ={}).torch_threads is None


@pytest.mark.parametrize("overrides, match", [
    ({"legacy_camera": "pinhole"}, "legacy_camera"),
    ({"grouping_size_weight": -1.0}, "grouping_size_weight"),
    ({"grouping_distance": 0.0}, "grouping_distance"),
    ({"grouping_distance": 2.5}, "grouping_distance"),
])
def test_bad_grouping_settings_are_refused(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        Settings.load(environ={}, data_dir=tmp_path, **overrides)


def test_grouping_distance_null_in_the_file_means_the_embedders(tmp_path):
    """``grouping_distance: null`` loads as None (the embedder's distance), a number as a float."""
    path = tmp_path / "c.yaml"
    path.write_text("grouping_distance: null\n")
    assert Settings.load(config_file=path, environ={}).grouping_distance is None
    path.write_text("grouping_distance: '0.2'\n")
    assert Settings.load(config_file=path, environ={}).grouping_distance == 0.2


def test_every_setting_is_read_from_the_environment_by_its_upper_case_name(tmp_path):
    assert Settings.ENV == {f.name.upper(): f.name for f in fields(Settings)}
    s = Settings.load(tmp_path / "none.yaml", environ={"DETECTOR_NMS_IOU": "0.3", "CROP_MARGIN": "0.2",
                                                      "GROUPING_DISTANCE": "null", "KMEANS_N_INIT": "3"})
    assert (s.detector_nms_iou, s.crop_margin, s.grouping_distance, s.kmeans_n_init) == (0.3, 0.2, None, 3)


def test_the_shipped_config_file_holds_no_values_and_defaults_come_from_settings():
    assert yaml.safe_load(DEFAULT_CONFIG_FILE.read_text()) is None
    assert Settings.load(environ={}) == Settings()
    config = DetectorConfig()
    assert (config.min_size_px, config.score_threshold, config.nms_iou, config.box_refine_steps) == (
        Settings.detector_min_size_px, Settings.detector_score_threshold, Settings.detector_nms_iou,
        Settings.detector_box_refine_steps)
    assert dedup.DEFAULT_DISTANCE_FACTOR == Settings.dedup_distance_factor and DEFAULT_MARGIN == Settings.crop_margin
