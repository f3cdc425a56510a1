"""The Sphinx documentation builds with warnings as errors (what ``make docs`` runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_docs_build_clean(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html", str(ROOT / "docs"),
         str(tmp_path / "html")],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, f"sphinx-build failed:\n{done.stderr[-6000:]}"
    html = (tmp_path / "html")
    for page in ("index", "http_api", "configuration", "deployment", "operations", "geometry", "training"):
        assert (html / f"{page}.html").is_file(), page
    reference = (html / "reference" / "sorterbot_cloud.html").read_text()
    # the API reference comes from the docstrings: a class and a function of this package are in it
    assert 'id="sorterbot_cloud.ops.aws.UploadQueue"' in reference
    assert 'id="sorterbot_cloud.ops.init_app"' in reference


def test_every_guide_is_in_the_toctree():
    index = (ROOT / "docs" / "index.rst").read_text()
    guides = sorted(p.stem for p in (ROOT / "docs").glob("*.rst") if p.stem != "index")
    assert [g for g in guides if f"   {g}\n" not in index] == []


def test_configuration_page_lists_every_environment_variable():
    from sorterbot_cloud.config import Settings

    page = (ROOT / "docs" / "configuration.rst").read_text()
    assert [name for name in Settings.ENV if f"``{name}``" not in page] == []


def test_http_api_page_covers_every_route_of_the_openapi_document():
    import json

    paths = json.loads((ROOT / "sorterbot_cloud" / "api" / "openapi.json").read_text())["paths"]
    page = (ROOT / "docs" / "http_api.rst").read_text()
    assert [p for p in paths if f"``{p}" not in page and f" {p}" not in page] == []
