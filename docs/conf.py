"""Sphinx configuration of the SorterBot Cloud documentation.

``make docs`` runs ``sphinx-build -W --keep-going -b html docs docs/_build/html``:
every warning is an error.

The API reference is built from the numpydoc docstrings by autodoc + numpydoc. A
reference page lists packages with the ``.. automodules:: <package>`` line; it is
expanded at read time (``source-read`` event) into one ``automodule`` section per
module of the package, so new modules appear without editing the docs.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))
os.environ.setdefault("SORTERBOT_DOCS", "1")

project = "SorterBot Cloud"
author = "SorterBot Cloud contributors"
copyright = "2020-2026, SorterBot Cloud contributors"
try:
    from importlib.metadata import version as _version

    release = _version("sorterbot-cloud")
except Exception:  # not installed: docs still build
    release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "numpydoc",
    "measured_figures",
]

exclude_patterns = ["_build", "_ext", "figures", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {"description": "Inference engine of a camera-guided sorting arm", "fixed_sidebar": True}

# Heavy or optional imports that autodoc does not need to execute: the renderer's VTK
# stack needs an OpenGL context, Detectron2 is an optional backend.
autodoc_mock_imports = ["pyvista", "vtk", "detectron2"]
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc type lines carry shapes, dtypes and units
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

#: Modules left out of the reference (command-line glue documented in the guides instead).
SKIP_MODULE = re.compile(r"(\.__main__$)")
_AUTOMODULES = re.compile(r"^\.\. automodules:: (?P<package>[\w.]+)[ \t]*$", re.M)


def _modules_of(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    names = [package]
    if hasattr(pkg, "__path__"):
        names += sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".") if not SKIP_MODULE.search(m.name))
    return names


def _expand_automodules(app, docname, source) -> None:
    def section(match: re.Match) -> str:
        out = []
        for module in _modules_of(match.group("package")):
            title = f"``{module}``"
            directive = f".. automodule:: {module}\n"
            if hasattr(importlib.import_module(module), "__path__"):
                # a package re-exports its modules' names (``__all__``); document them where they live
                directive += "   :ignore-module-all:\n"
            out.append(f"{title}\n{'-' * len(title)}\n\n{directive}")
        return "\n".join(out)

    source[0] = _AUTOMODULES.sub(section, source[0])


def setup(app):
    app.connect("source-read", _expand_automodules)
    return {"parallel_read_safe": True}
