"""Pieces of the benchmark commands that run without model weights."""

from __future__ import annotations

import numpy as np
import pytest

from sorterbot_cloud.bench import GroundTruthDetector, legacy_constants_of, session_spec
from sorterbot_cloud.camera import ArmConstants

GROUND_TRUTH = {
    "frames": [
        {"image_name": "1200.jpg", "boxes": [
            {"object_id": 0, "class": "item", "box_xyxy": [10, 10, 50, 50], "visible_fraction": 1.0},
            {"object_id": 1, "class": "container", "box_xyxy": [-20, 60, 90, 130], "visible_fraction": 0.6},
            {"object_id": 2, "class": "item", "box_xyxy": [100, 10, 120, 30], "visible_fraction": 0.2},
            {"object_id": 3, "class": "distractor", "box_xyxy": [130, 10, 150, 30], "visible_fraction": 1.0},
        ]},
        {"image_name": "1250.jpg", "boxes": []},
    ]
}


def test_ground_truth_detector_answers_visible_items_and_containers_clipped():
    detector = GroundTruthDetector(min_visible_fraction=0.5)
    detector.use(GROUND_TRUTH, "1200.jpg")
    detections = detector.detect(np.zeros((120, 160, 3), np.uint8))
    assert detections.class_ids.tolist() == [0, 1]
    np.testing.assert_allclose(detections.boxes_xyxy, [[10, 10, 50, 50], [0, 60, 90, 120]])
    detector.use(GROUND_TRUTH, "1250.jpg")
    assert len(detector.detect(np.zeros((120, 160, 3), np.uint8))) == 0


@pytest.mark.parametrize("seed", range(1000, 1040), ids=lambda s: f"seed{s}")
def test_session_spec_stays_in_the_issue_ranges(seed):
    spec = session_spec(seed)
    assert 2 <= spec["n_item_types"] <= 4
    assert max(3, spec["n_item_types"]) <= spec["n_items"] <= 8
    assert 1 <= spec["n_containers"] <= 4
    assert session_spec(seed) == spec  # deterministic


def test_legacy_constants_drop_the_camera():
    constants = ArmConstants.reference(calibrated=True).to_mapping()
    legacy = ArmConstants.from_mapping(legacy_constants_of(constants))
    assert not legacy.calibrated and legacy.arm_radius == constants["arm_radius"]


@pytest.mark.slow
def test_evaluate_sessions_skips_seeds_the_simulator_cannot_lay_out(tmp_path, monkeypatch):
    """``evaluate-sessions`` end to end on one rendered session (simulator boxes through the
    real service on the embedded PostgreSQL): a seed whose scene cannot be laid out is
    skipped and recorded, the next seed is scored in both geometry modes."""
    import json

    from click.testing import CliRunner

    from sorterbot_cloud import bench
    from sorterbot_cloud.errors import BadRequest

    real = bench.simulated_session

    def fake_unplaceable_first_seed(cache, seed, heldout=True, **kwargs):
        if seed == 7000:
            raise BadRequest("could not place container 'tray' without overlap (fake)")
        return real(cache, seed, heldout=heldout, **kwargs)

    import torch

    monkeypatch.setattr(bench, "simulated_session", fake_unplaceable_first_seed)
    monkeypatch.delenv("PG_CONN", raising=False)
    out = tmp_path / "eval.json"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(bench.evaluate_sessions, [
            "--n", "1", "--kinds", "known", "--detector", "ground-truth", "--threads", "1",
            "--cache", str(tmp_path / "sessions"), "--json-out", str(out),
        ])
    finally:
        torch.set_num_threads(threads)
    assert torch.is_grad_enabled()  # the bench context restores autograd for whatever runs next
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(out.read_text())
    assert report["kinds"] == "known" and report["seeds_skipped"] == [7000]
    assert [(row["seed"], row["mode"]) for row in report["sessions"]] == [(7001, "calibrated"), (7001, "legacy")]
    assert len(list((tmp_path / "sessions").glob("known_seed7001_*"))) == 1  # rendered with the known kinds
    for row in report["sessions"]:
        assert row["score"]["counts_exact"] is True  # simulator boxes: every object found once

    # pool-sessions over two copies of the report: twice the sessions, the same shares, the
    # p95 of the errors of both copies
    pooled = CliRunner().invoke(bench.pool_sessions, [str(out), str(out)])
    assert pooled.exit_code == 0, pooled.output
    calibrated = next(line.split() for line in pooled.output.splitlines() if line.startswith("calibrated "))
    errors = [e for row in report["sessions"] for e in row["score"]["position_errors_mm"]] * 2
    assert calibrated[1] == "2" and float(calibrated[2]) == pytest.approx(1.0)
    assert float(calibrated[3]) == pytest.approx(np.percentile(errors, 95), abs=0.006)
    assert "item" in pooled.output.splitlines()[-1] and "container" in pooled.output.splitlines()[-1]


@pytest.mark.slow
def test_evaluate_sessions_replays_sessions_kept_in_its_data_dir(tmp_path, monkeypatch):
    """With ``--data-dir`` the database outlives the run: a second run finds the session
    stored, does not ingest it again (ingest is replaced by a fake that fails) and scores
    the replayed trigger exactly as the first run did."""
    import json

    import torch
    from click.testing import CliRunner

    from sorterbot_cloud import bench

    monkeypatch.delenv("PG_CONN", raising=False)
    threads = torch.get_num_threads()
    args = ["--n", "1", "--seed-start", "7001", "--kinds", "known", "--detector", "ground-truth", "--threads", "1",
            "--cache", str(tmp_path / "sessions"), "--data-dir", str(tmp_path / "db")]
    try:
        first = CliRunner().invoke(bench.evaluate_sessions, [*args, "--json-out", str(tmp_path / "first.json")])
        assert first.exit_code == 0, first.output + repr(first.exception)
        assert "replayed" not in first.output

        def fake_ingest_must_not_run(*a, **k):
            raise AssertionError("the stored session was ingested again")

        monkeypatch.setattr(bench, "ingest_session", fake_ingest_must_not_run)
        second = CliRunner().invoke(bench.evaluate_sessions, [*args, "--json-out", str(tmp_path / "second.json")])
    finally:
        torch.set_num_threads(threads)
    assert second.exit_code == 0, second.output + repr(second.exception)
    assert "1 of 1 sessions were stored" in second.output
    rows = [json.loads((tmp_path / f"{name}.json").read_text())["sessions"] for name in ("first", "second")]
    assert [r["score"] for r in rows[0]] == [r["score"] for r in rows[1]]
    assert rows[0][0]["score"]["counts_exact"] is True

    # --groups true-kinds hands each trigger the session's true number of item kinds
    from sorterbot_cloud.service import Service

    asked = []
    real_trigger = Service.commands_for_session

    def spy(self, arm_id, session_id, constants, **kwargs):
        asked.append(kwargs.get("n_groups"))
        return real_trigger(self, arm_id, session_id, constants, **kwargs)

    monkeypatch.setattr(Service, "commands_for_session", spy)
    try:
        third = CliRunner().invoke(bench.evaluate_sessions, [*args, "--groups", "true-kinds", "--json-out", str(tmp_path / "third.json")])
    finally:
        torch.set_num_threads(threads)
    assert third.exit_code == 0, third.output + repr(third.exception)
    gt = json.loads(next((tmp_path / "sessions").rglob("ground_truth.json")).read_text())
    n_kinds = len({o["type"] for o in gt["objects"] if o["class"] == "item"})
    assert asked == [n_kinds, n_kinds]  # calibrated and legacy
    report = json.loads((tmp_path / "third.json").read_text())
    assert report["groups"] == "true-kinds"
    for row in report["sessions"]:
        found = row["score"]["n_found"]
        assert row["n_item_kinds"] == n_kinds
        assert row["n_item_groups"] == min(n_kinds, found["item"], found["container"])
    assert "sessions with one item group per kind" in third.output


def test_pool_sessions_refuses_a_file_that_is_not_an_evaluate_sessions_report(tmp_path):
    from click.testing import CliRunner

    from sorterbot_cloud import bench

    bad = tmp_path / "other.json"
    bad.write_text('{"summary": {}}')
    result = CliRunner().invoke(bench.pool_sessions, [str(bad)])
    assert result.exit_code != 0
    assert "no 'sessions' list" in result.output
    bad.write_text('{"sessions": [{"mode": "sideways", "score": {}}]}')
    result = CliRunner().invoke(bench.pool_sessions, [str(bad)])
    assert result.exit_code != 0 and "known mode" in result.output


@pytest.mark.slow
def test_tune_grouping_replays_the_trigger(tmp_path, monkeypatch):
    """``tune-grouping`` replays only the grouping of ingested sessions: at the settings'
    own weights it scores what the full trigger (``evaluate-sessions``) scores on the same
    sessions in calibrated mode, and it writes one row per grid point; with ``--data-dir`` a
    second run reuses the stored sessions and scores them the same."""
    import json

    import torch
    from click.testing import CliRunner

    from sorterbot_cloud import bench
    from sorterbot_cloud.config import Settings

    monkeypatch.delenv("PG_CONN", raising=False)
    settings = Settings.load()
    cache, threads = str(tmp_path / "sessions"), torch.get_num_threads()
    try:
        tune_args = [
            "--n", "2", "--kinds", "known", "--detector", "ground-truth", "--threads", "1", "--cache", cache,
            "--size-weights", f"0,{settings.grouping_size_weight}", "--height-weights", f"{settings.grouping_height_weight}",
            "--data-dir", str(tmp_path / "db"),
        ]
        tuned = CliRunner().invoke(bench.tune_grouping, [*tune_args, "--json-out", str(tmp_path / "tune.json")])
        # a second run on the kept database replays the stored sessions without ingesting them
        with monkeypatch.context() as m:
            m.setattr(bench, "ingest_session", lambda *a, **k: pytest.fail("a stored session was ingested again"))
            again = CliRunner().invoke(bench.tune_grouping, [*tune_args, "--json-out", str(tmp_path / "tune2.json")])
        evaluated = CliRunner().invoke(bench.evaluate_sessions, [
            "--n", "2", "--kinds", "known", "--seed-start", str(bench.TUNING_SEED_START["known"]), "--detector", "ground-truth",
            "--threads", "1", "--cache", cache, "--json-out", str(tmp_path / "eval.json"),
        ])
    finally:
        torch.set_num_threads(threads)
    assert tuned.exit_code == 0, tuned.output + repr(tuned.exception)
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    assert again.exit_code == 0, again.output + repr(again.exception)
    tune_report = json.loads((tmp_path / "tune.json").read_text())
    rows = tune_report["rows"]
    assert json.loads((tmp_path / "tune2.json").read_text())["rows"] == rows
    assert [(r["size_weight"], r["height_weight"]) for r in rows] == [(0.0, settings.grouping_height_weight),
                                                                      (settings.grouping_size_weight, settings.grouping_height_weight)]
    assert all(0.0 <= r["known_sorted"] <= 1.0 for r in rows)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert tune_report["seeds"]["known"] == [r["seed"] for r in report["sessions"]][::2]  # the same sessions
    assert rows[1]["known_sorted"] == pytest.approx(report["summary"]["calibrated"]["share_sorted_correctly"])


def test_tune_grouping_breaks_ties_inside_the_plateau():
    from sorterbot_cloud.bench import _plateau_best

    ws, wh = [0.0, 1.0, 2.0], [0.0, 1.0]
    share = {(0.0, 0.0): 0.5, (0.0, 1.0): 0.9, (1.0, 0.0): 0.9, (1.0, 1.0): 0.9, (2.0, 0.0): 0.9, (2.0, 1.0): 0.9}
    rows = [{"size_weight": a, "height_weight": b, "group_distance": 0.2, "mean_sorted": share[(a, b)]} for a in ws for b in wh]
    best = _plateau_best(rows, ws, wh)
    assert (best["size_weight"], best["height_weight"]) in {(2.0, 0.0), (2.0, 1.0)}  # away from the 0.5 corner
    share[(1.0, 1.0)] = 0.95
    rows = [{"size_weight": a, "height_weight": b, "group_distance": 0.2, "mean_sorted": share[(a, b)]} for a in ws for b in wh]
    assert (_plateau_best(rows, ws, wh)["size_weight"], _plateau_best(rows, ws, wh)["height_weight"]) == (1.0, 1.0)


def test_tune_grouping_ties_count_float_noise_and_the_distance_axis():
    """Shares that differ by float rounding are ties, and the neighbourhood spans the
    group-distance axis too: of two tied rows, the one whose neighbouring distances also
    score well wins over the one next to a poor distance."""
    from sorterbot_cloud.bench import _plateau_best

    ws, wh, gd = [1.0], [0.25], [0.1, 0.15, 0.2, 0.25, 0.3]
    share = {0.1: 0.5, 0.15: (0.925 + 1.0) / 2, 0.2: 0.9, 0.25: (0.95 + 0.975) / 2, 0.3: 0.95}
    assert share[0.15] != share[0.25]  # 0.9625 vs 0.9624999...: equal up to rounding
    rows = [{"size_weight": 1.0, "height_weight": 0.25, "group_distance": d, "mean_sorted": share[d]} for d in gd]
    assert _plateau_best(rows, ws, wh, gd)["group_distance"] == 0.25  # neighbours 0.9 and 0.95, not 0.5 and 0.9


def test_tune_grouping_neighbourhood_spans_the_colour_axis():
    """Of two tied colour weights, the one whose neighbouring colour weights also score well wins."""
    from sorterbot_cloud.bench import _plateau_best

    ws, wh, gd, wc = [1.0], [0.0], [0.125], [0.0, 0.5, 1.0, 2.0]
    share = {0.0: 0.5, 0.5: 0.95, 1.0: 0.9, 2.0: 0.95}
    rows = [{"size_weight": 1.0, "height_weight": 0.0, "group_distance": 0.125, "colour_weight": c, "mean_sorted": share[c]}
            for c in wc]
    assert _plateau_best(rows, ws, wh, gd, wc)["colour_weight"] == 2.0  # neighbour 0.9, not 0.5 and 0.9
    share[0.0] = 0.95
    rows = [{**r, "mean_sorted": share[r["colour_weight"]]} for r in rows]
    assert _plateau_best(rows, ws, wh, gd, wc)["colour_weight"] == 0.0  # neighbours 0.95 and itself


def test_memory_figures_split_the_resident_set_and_track_its_peak():
    from sorterbot_cloud.bench import peak_rss_mb, rss_file_mb, rss_mb

    rss, file_backed = rss_mb(), rss_file_mb()
    assert 0 < file_backed < rss  # the interpreter's mapped libraries, and its own heap besides
    assert peak_rss_mb() >= rss - 1.0
    block = np.ones(256 * 2**20 // 8)  # 256 MiB, every page written
    now = rss_mb()
    assert now >= rss + 200
    assert peak_rss_mb() >= now - 1.0  # the peak has seen the block
    del block


def test_group_counts_compare_with_the_kinds_capped_by_the_containers(capsys):
    from sorterbot_cloud import bench

    def row(mode, groups, kinds, containers):
        return {"mode": mode, "n_item_groups": groups, "n_item_kinds": kinds, "score": {"n_true": {"container": containers}}}

    bench._echo_group_counts([row("calibrated", 2, 2, 3), row("calibrated", 1, 2, 1), row("calibrated", 3, 2, 4),
                              row("legacy", 2, 3, 2)])
    assert capsys.readouterr().out.strip().endswith("calibrated 2/3, legacy 1/1")
