"""The documentation's figure tables are read from the benchmark reports in docs/figures/."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("measured_figures", ROOT / "docs" / "_ext" / "measured_figures.py")
measured_figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measured_figures)


def test_every_section_of_the_index_renders_from_its_reports():
    sections = yaml.safe_load(measured_figures.INDEX.read_text())
    assert sections, "figures.yaml lists no sections"
    for section, rows in sections.items():
        rendered = measured_figures.render_rows(section)
        assert len(rendered) == len(rows)
        for row in rendered:
            assert set(row) == set(measured_figures.COLUMNS)
            assert "{" not in row["figure"], f"{section}: unformatted field in {row['figure']!r}"


def test_a_figure_is_the_value_its_report_holds():
    report = json.loads((measured_figures.FIGURES_DIR / "sessions_heldout.json").read_text())
    expected = report["summary"]["calibrated"]["share_counts_exact"]
    cache: dict = {}
    value = measured_figures.field_value(["sessions_heldout.json", "summary", "calibrated", "share_counts_exact"], cache)
    assert value == expected


def _index(tmp_path: Path, monkeypatch, report: dict, fields: dict, figure: str) -> Path:
    (tmp_path / "r.json").write_text(json.dumps(report))
    monkeypatch.setattr(measured_figures, "FIGURES_DIR", tmp_path)
    index = tmp_path / "figures.yaml"
    index.write_text(yaml.safe_dump({"s": [{"what": "w", "figure": figure, "fields": fields, "command": "c",
                                            "date": "2026-01-01", "machine": "m"}]}))
    return index


def test_weighted_mean_and_formatting(tmp_path, monkeypatch):
    report = {"a": [{"v": 1.0, "n": 1}, {"v": 0.5, "n": 3}]}
    fields = {"x": {"weighted_mean": [[["r.json", "a", 0, "v"], ["r.json", "a", 0, "n"]],
                                      [["r.json", "a", 1, "v"], ["r.json", "a", 1, "n"]]]}}
    index = _index(tmp_path, monkeypatch, report, fields, "{x:.3f}")
    assert measured_figures.render_rows("s", index)[0]["figure"] == "0.625"


@pytest.mark.parametrize(
    "report, fields, figure, message",
    [({"a": 1}, {"x": ["r.json", "b"]}, "{x}", "missing 'b'"),
     ({"a": None}, {"x": ["r.json", "a"]}, "{x}", "is null"),
     ({"a": 1}, {"x": ["other.json", "a"]}, "{x}", "other.json is not in"),
     ({"a": 1}, {"x": ["r.json", "a"]}, "{y}", "cannot format")],
    ids=["missing-key", "null", "missing-report", "unknown-name"],
)
def test_a_figure_its_report_does_not_back_fails(tmp_path, monkeypatch, report, fields, figure, message):
    index = _index(tmp_path, monkeypatch, report, fields, figure)
    with pytest.raises(measured_figures.FigureError, match=message):
        measured_figures.render_rows("s", index)
