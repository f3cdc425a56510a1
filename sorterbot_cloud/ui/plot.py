"""Top-down plot of a session's objects on the table, as inline SVG.

Positions are the rich trigger result's arm polar coordinates (``r_mm``, ``theta_deg``;
DESIGN.md, Arm constants and geometry): theta = 0 along +x, counter-clockwise seen from
above, so an object lies at ``x_mm = r_mm cos(theta)``, ``y_mm = r_mm sin(theta)``. The
SVG's user units are millimetres with y pointing up (the drawing is flipped once, in
``viewBox`` coordinates: ``svg_y = -y_mm``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from markupsafe import Markup, escape

#: Colours of item groups (Okabe & Ito's colour-blind-safe palette), cycled by ``cluster_id``.
GROUP_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#8C6D1F", "#000000")
#: Colour of objects without a group (a container that receives nothing, an unsorted item).
NO_GROUP_COLOUR = "#6B6B6B"


def group_colour(cluster_id: int | None) -> str:
    """The plot colour of an item group (``None``: no group)."""
    if cluster_id is None:
        return NO_GROUP_COLOUR
    return GROUP_COLOURS[int(cluster_id) % len(GROUP_COLOURS)]


def xy_mm(obj: Mapping[str, Any]) -> tuple[float, float]:
    """Table-plane position of an object record: ``(x_mm, y_mm)`` from ``r_mm``, ``theta_deg``."""
    theta = math.radians(float(obj["theta_deg"]))
    r_mm = float(obj["r_mm"])
    return r_mm * math.cos(theta), r_mm * math.sin(theta)


def container_groups(result: Mapping[str, Any]) -> dict[int, int]:
    """Container ``object_id`` -> the item group its commands drop into it."""
    return {int(c["place"]["object_id"]): int(c["cluster_id"]) for c in result.get("commands") or []}


def _ring_step_mm(extent_mm: float) -> float:
    """A round distance between range rings: at most 5 rings inside ``extent_mm``."""
    for step in (25.0, 50.0, 100.0, 200.0, 250.0, 500.0, 1000.0):
        if extent_mm / step <= 5:
            return step
    return 10.0 ** math.ceil(math.log10(extent_mm / 5))


def table_svg(result: Mapping[str, Any], *, title_id: str = "table-plot-title", desc_id: str = "table-plot-desc") -> Markup:
    """Draw the objects of a rich trigger result seen from above, with one arrow per move.

    Items are dots filled with their group's colour, containers squares outlined in the
    colour of the group they receive; each command is an arrow from its item to its
    container, numbered in move order. Every shape carries a ``<title>``; the root has
    ``role="img"`` with a title and a description.

    Parameters
    ----------
    result : mapping
        The rich result (``objects`` with ``object_id``, ``class``, ``r_mm``,
        ``theta_deg``, ``cluster_id``; ``commands`` with ``pick.object_id``,
        ``place.object_id``, ``cluster_id``), as ``POST /v1/.../commands`` answers it.
    title_id, desc_id : str
        Element ids of the SVG's ``<title>`` and ``<desc>``.

    Returns
    -------
    markupsafe.Markup
        The ``<svg>`` element. Objects carry ``data-object-id`` and ``data-class``,
        arrows ``data-move`` (1-based move number).
    """
    objects = list(result.get("objects") or [])
    commands = list(result.get("commands") or [])
    groups = container_groups(result)
    positions = {int(o["object_id"]): xy_mm(o) for o in objects}
    xs = [0.0] + [p[0] for p in positions.values()]  # the arm base is always in view
    ys = [0.0] + [p[1] for p in positions.values()]
    span_mm = max(max(xs) - min(xs), max(ys) - min(ys), 100.0)
    pad_mm = span_mm * 0.12
    x0_mm, y0_mm = min(xs) - pad_mm, min(ys) - pad_mm
    width_mm, height_mm = max(xs) - min(xs) + 2 * pad_mm, max(ys) - min(ys) + 2 * pad_mm
    reach_mm = max([math.hypot(*p) for p in positions.values()] + [100.0])
    step_mm = _ring_step_mm(reach_mm)
    dot_mm = span_mm * 0.018
    font_mm = span_mm * 0.032
    n_items = sum(o["class"] == "item" for o in objects)
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="table-plot" role="img" '
        f'viewBox="{x0_mm:.1f} {-(y0_mm + height_mm):.1f} {width_mm:.1f} {height_mm:.1f}" '
        f'aria-labelledby="{title_id} {desc_id}">',
        f'<title id="{title_id}">Top-down plot of the table in arm coordinates</title>',
        f'<desc id="{desc_id}">{n_items} items and {len(objects) - n_items} containers; '
        f'{len(commands)} arrows from each item to its container, numbered in move order. '
        f'Range rings every {step_mm:g} mm around the arm base; theta 0 degrees points right.</desc>',
        '<defs>',
    ]
    for colour in sorted({group_colour(c.get("cluster_id")) for c in commands}):
        parts.append(
            f'<marker id="arrow-{colour[1:]}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
            f'markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
        )
    parts.append('</defs><g class="grid" aria-hidden="true">')
    ring = step_mm
    while ring <= reach_mm * 1.2:
        parts.append(f'<circle cx="0" cy="0" r="{ring:.1f}" fill="none" stroke="#c8c8c8" vector-effect="non-scaling-stroke"/>')
        parts.append(f'<text x="{ring + font_mm * 0.2:.1f}" y="{-font_mm * 0.3:.1f}" font-size="{font_mm * 0.8:.1f}" '
                     f'fill="#444">{ring:g} mm</text>')
        ring += step_mm
    x_end_mm = x0_mm + width_mm
    if x_end_mm > 0:
        parts.append(f'<line x1="0" y1="0" x2="{x_end_mm:.1f}" y2="0" stroke="#999" stroke-dasharray="4 4" '
                     f'vector-effect="non-scaling-stroke"/>')
        parts.append(f'<text x="{x_end_mm - font_mm * 4:.1f}" y="{font_mm * 1.2:.1f}" font-size="{font_mm * 0.8:.1f}" '
                     f'fill="#444">theta 0°</text>')
    parts.append(f'<circle cx="0" cy="0" r="{dot_mm * 1.4:.1f}" fill="#222"/>')
    parts.append(f'<text x="{dot_mm * 2:.1f}" y="{font_mm * 1.4:.1f}" font-size="{font_mm:.1f}" fill="#222">arm base</text>')
    parts.append('</g><g class="moves">')
    for number, command in enumerate(commands, start=1):
        pick, place = int(command["pick"]["object_id"]), int(command["place"]["object_id"])
        if pick not in positions or place not in positions:
            continue
        (x0, y0), (x1, y1) = positions[pick], positions[place]
        colour = group_colour(command.get("cluster_id"))
        length = math.hypot(x1 - x0, y1 - y0) or 1.0
        shrink = min(dot_mm * 1.6, length / 3)  # stop short of the shapes
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        parts.append(
            f'<g data-move="{number}"><title>Move {number}: item {pick} to container {place} '
            f'(group {escape(str(command.get("cluster_id")))})</title>'
            f'<line x1="{x0 + ux * shrink:.1f}" y1="{-(y0 + uy * shrink):.1f}" x2="{x1 - ux * shrink:.1f}" '
            f'y2="{-(y1 - uy * shrink):.1f}" stroke="{colour}" stroke-width="2" vector-effect="non-scaling-stroke" '
            f'marker-end="url(#arrow-{colour[1:]})"/></g>'
        )
    parts.append('</g><g class="objects">')
    for obj in objects:
        object_id = int(obj["object_id"])
        x, y = positions[object_id]
        where = f'r {float(obj["r_mm"]):.0f} mm, theta {float(obj["theta_deg"]):.1f}°'
        if obj["class"] == "container":
            group = groups.get(object_id)
            colour = group_colour(group)
            receives = f"receives group {group}" if group is not None else "receives nothing"
            parts.append(
                f'<g data-object-id="{object_id}" data-class="container"><title>Container {object_id}: {where}, '
                f'{receives}</title><rect x="{x - dot_mm * 1.5:.1f}" y="{-y - dot_mm * 1.5:.1f}" '
                f'width="{dot_mm * 3:.1f}" height="{dot_mm * 3:.1f}" fill="#fff" stroke="{colour}" stroke-width="3" '
                f'vector-effect="non-scaling-stroke"/></g>'
            )
        else:
            group = obj.get("cluster_id")
            colour = group_colour(group)
            parts.append(
                f'<g data-object-id="{object_id}" data-class="item"><title>Item {object_id}: {where}, '
                f'group {escape(str(group))}</title><circle cx="{x:.1f}" cy="{-y:.1f}" r="{dot_mm:.1f}" fill="{colour}" '
                f'stroke="#fff" vector-effect="non-scaling-stroke"/></g>'
            )
        parts.append(f'<text x="{x + dot_mm * 1.8:.1f}" y="{-y - dot_mm * 1.2:.1f}" font-size="{font_mm:.1f}" '
                     f'fill="#222" aria-hidden="true">{object_id}</text>')
    parts.append("</g></svg>")
    return Markup("".join(parts))  # every interpolated value is a number, a fixed word or escaped
