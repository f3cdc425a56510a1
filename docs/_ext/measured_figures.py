"""Sphinx directive ``measured-figures``: tables of figures read from benchmark reports.

Every figure in the documentation's tables comes from the JSON report a benchmark
command wrote (``evaluate-sessions --json-out``, ``bench ingest --json-out``,
``evaluate-real-grouping --out`` ...), kept in ``docs/figures/``. ``docs/figures/figures.yaml``
lists, per section, the rows: what is measured, a format string for the value, the report
fields it reads, the command that wrote the report, the date and the machine. A field
that a report does not hold fails the build (``make docs`` treats warnings as errors), so
a table cannot silently keep a figure its report no longer backs.

Field specifications (YAML)::

    name: [report.json, key, key, ...]            # one value, keys into the JSON document
    name: {weighted_mean: [[VALUE_PATH, WEIGHT_PATH], ...]}   # sum(v * w) / sum(w)

Usage in a page::

    .. measured-figures:: sessions
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"
INDEX = FIGURES_DIR / "figures.yaml"
COLUMNS = ("what", "figure", "command", "date", "machine")


class FigureError(ValueError):
    """A row of ``figures.yaml`` that its reports do not back."""


def _lookup(path: list[Any], cache: dict[str, Any]) -> Any:
    """The value at ``path`` = ``[report file, key, ...]`` under :data:`FIGURES_DIR`."""
    if not isinstance(path, list) or not path:
        raise FigureError(f"a field must be [report.json, key, ...], got {path!r}")
    name, keys = str(path[0]), path[1:]
    if name not in cache:
        file = FIGURES_DIR / name
        if not file.is_file():
            raise FigureError(f"report {name} is not in {FIGURES_DIR}")
        cache[name] = json.loads(file.read_text())
    value = cache[name]
    for key in keys:
        try:
            value = value[key] if isinstance(value, dict) else value[int(key)]
        except (KeyError, IndexError, ValueError, TypeError):
            raise FigureError(f"{name} has no {'/'.join(map(str, path[1:]))} (missing {key!r})") from None
    if value is None:
        raise FigureError(f"{name}: {'/'.join(map(str, keys))} is null")
    return value


def field_value(spec: Any, cache: dict[str, Any]) -> Any:
    """Resolve one field specification (see the module docstring).

    Raises
    ------
    FigureError
        If a report or key is missing, a value is null, or the weights sum to zero.
    """
    if isinstance(spec, dict) and set(spec) == {"weighted_mean"}:
        pairs = [(float(_lookup(v, cache)), float(_lookup(w, cache))) for v, w in spec["weighted_mean"]]
        total = sum(w for _, w in pairs)
        if total <= 0:
            raise FigureError(f"weights of {spec!r} sum to {total}")
        return sum(v * w for v, w in pairs) / total
    return _lookup(spec, cache)


def render_rows(section: str, index: Path = INDEX) -> list[dict[str, str]]:
    """The rows of one section with their figures filled in from the reports.

    Returns
    -------
    list of dict
        One dict per row with the keys of :data:`COLUMNS`.

    Raises
    ------
    FigureError
        If the section is unknown or a row's fields cannot be read or formatted.
    """
    sections = yaml.safe_load(index.read_text())
    if section not in sections:
        raise FigureError(f"{index.name} has no section {section!r} (has {sorted(sections)})")
    cache: dict[str, Any] = {}
    rows = []
    for row in sections[section]:
        values = {name: field_value(spec, cache) for name, spec in (row.get("fields") or {}).items()}
        try:
            figure = row["figure"].format(**values)
        except (KeyError, ValueError, TypeError) as error:
            raise FigureError(f"{section}: cannot format {row.get('what')!r}: {error}") from None
        rows.append({"what": row["what"], "figure": figure, "command": row["command"],
                     "date": str(row["date"]), "machine": row["machine"]})
    return rows


def _list_table(rows: list[dict[str, str]]) -> str:
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 25 25 30 8 12", ""]
    header = {column: column for column in COLUMNS}
    for cells in [header] + rows:
        for i, column in enumerate(COLUMNS):
            text = " ".join(str(cells[column]).split())
            if column == "command" and cells is not header:
                text = f"``{text}``"
            lines.append(f"   {'*' if i == 0 else ' '} - {text}")
    return "\n".join(lines) + "\n"


def setup(app):
    from docutils import nodes
    from docutils.parsers.rst import Directive
    from docutils.statemachine import StringList

    class MeasuredFigures(Directive):
        required_arguments = 1

        def run(self):
            try:
                text = _list_table(render_rows(self.arguments[0]))
            except FigureError as error:
                raise self.error(str(error)) from None
            container = nodes.container()
            self.state.nested_parse(StringList(text.splitlines(), source=str(INDEX)), self.content_offset, container)
            return container.children

    app.add_directive("measured-figures", MeasuredFigures)
    return {"parallel_read_safe": True}
