"""Session overview: a contact sheet of a session's frames with the sorting plan drawn on.

Every frame of the session, in base pulse-width order, is scaled to a thumbnail and laid
out on a grid. Each detection behind a found object is outlined: items in the colour of
their group (``cluster_id``), containers in the colour of the group they receive (white
when they receive none), each labelled with its object id (``I<id>``, ``C<id>``). A
legend under the grid says which container every group goes to, with the container's
arm coordinates, and why the plan is empty when it is.

Drawing uses OpenCV (``cv2.rectangle``, ``cv2.putText``); the input is the rich trigger
result of :meth:`sorterbot_cloud.service.Service.commands_for_session`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np

from sorterbot_cloud.imaging import decode_image, encode_png
from sorterbot_cloud.storage import DiskArchive

#: Group colours (RGB): matplotlib's ``tab10`` palette, readable on grey tables.
GROUP_COLOURS_RGB: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
UNASSIGNED_RGB = (255, 255, 255)
BACKGROUND_RGB = (24, 24, 24)
TEXT_RGB = (235, 235, 235)
FONT = cv2.FONT_HERSHEY_SIMPLEX
#: Bounds of a thumbnail cell's height over its width: the cell takes the first frame's
#: aspect within these, and every frame is scaled, keeping its aspect, to fit its cell,
#: so a frame of any shape costs at most ``thumb_width_px * 2`` rows.
THUMB_ASPECT_RANGE = (0.25, 2.0)


def group_colour(cluster_id: int | None) -> tuple[int, int, int]:
    """RGB colour of a group (white for None)."""
    if cluster_id is None:
        return UNASSIGNED_RGB
    return GROUP_COLOURS_RGB[int(cluster_id) % len(GROUP_COLOURS_RGB)]


def container_groups(result: Mapping) -> dict[int, list[int]]:
    """``container object_id -> sorted group ids`` it receives, from the result's commands."""
    out: dict[int, set[int]] = {}
    for command in result.get("commands", []):
        out.setdefault(int(command["place"]["object_id"]), set()).add(int(command["cluster_id"]))
    return {k: sorted(v) for k, v in out.items()}


def legend_lines(result: Mapping) -> list[tuple[tuple[int, int, int] | None, str]]:
    """The legend: ``(colour or None, text)`` per line.

    One line per group: its item ids and the container it goes to (object id, theta in
    degrees, r in mm or legacy pixel units); then the reason when the plan is empty.
    """
    objects = {int(o["object_id"]): o for o in result.get("objects", [])}
    lines: list[tuple[tuple[int, int, int] | None, str]] = [
        (None, f"arm {result.get('arm_id')}  session {result.get('session_id')}  mode {result.get('mode')}  "
               f"{sum(o['class'] == 'item' for o in objects.values())} items, "
               f"{sum(o['class'] == 'container' for o in objects.values())} containers, "
               f"{len(result.get('commands', []))} commands")
    ]
    groups: dict[int, dict] = {}
    for command in result.get("commands", []):
        g = groups.setdefault(int(command["cluster_id"]), {"items": [], "containers": set()})
        g["items"].append(int(command["pick"]["object_id"]))
        g["containers"].add(int(command["place"]["object_id"]))
    unit = "mm" if result.get("mode") == "calibrated" else "px"
    for gid in sorted(groups):
        targets = []
        for cid in sorted(groups[gid]["containers"]):
            c = objects.get(cid, {})
            targets.append(f"C{cid} (theta {c.get('theta_deg', float('nan')):.1f} deg, r {c.get('r_mm', float('nan')):.0f} {unit})")
        items = ", ".join(f"I{i}" for i in sorted(groups[gid]["items"]))
        lines.append((group_colour(gid), f"group {gid}: {items} -> {', '.join(targets)}"))
    if result.get("reason"):
        lines.append((None, f"no commands: {result['reason']}"))
    return lines


def render_overview(
    frames: Sequence[tuple[str, np.ndarray]],
    result: Mapping,
    *,
    thumb_width_px: int = 410,
    columns: int | None = None,
) -> np.ndarray:
    """Draw the contact sheet.

    Parameters
    ----------
    frames : sequence of (image_name, image)
        ``image`` is an ndarray of shape (H, W, 3), uint8, RGB, in the pixels the boxes
        of ``result`` refer to. Drawn in the given order (pass them by pulse width).
    result : mapping
        Rich trigger result (``objects`` with ``detections``, ``commands``, ``reason``).
    thumb_width_px : int
        Width of each thumbnail cell; its height is ``thumb_width_px`` times the first
        frame's height over width, bounded by :data:`THUMB_ASPECT_RANGE`. Each frame is
        scaled to fit its cell with its own aspect (top left aligned).
    columns : int, optional
        Grid columns; default ``ceil(sqrt(n_frames))``, at most 5.

    Returns
    -------
    ndarray of shape (H_sheet, W_sheet, 3), uint8, RGB

    Raises
    ------
    ValueError
        If a frame is not an (H, W, 3) uint8 image or ``thumb_width_px`` is not positive.
    """
    if thumb_width_px <= 0:
        raise ValueError(f"thumb_width_px must be positive, got {thumb_width_px}")
    for name, image in frames:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frame {name}: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    n = len(frames)
    columns = columns or max(1, min(5, math.ceil(math.sqrt(max(n, 1)))))
    rows = max(1, math.ceil(n / columns))
    aspect = (frames[0][1].shape[0] / frames[0][1].shape[1]) if n else 0.75
    aspect = min(max(aspect, THUMB_ASPECT_RANGE[0]), THUMB_ASPECT_RANGE[1])
    thumb_h = max(1, int(round(thumb_width_px * aspect)))
    pad = 6
    lines = legend_lines(result)
    line_h = 22
    legend_h = pad + line_h * len(lines) + pad
    sheet_w = columns * (thumb_width_px + pad) + pad
    sheet_h = rows * (thumb_h + pad) + pad + legend_h
    sheet = np.empty((sheet_h, sheet_w, 3), np.uint8)
    sheet[:] = BACKGROUND_RGB

    receives = container_groups(result)
    boxes_by_frame: dict[str, list[tuple[np.ndarray, tuple[int, int, int], str]]] = {}
    for obj in result.get("objects", []):
        oid = int(obj["object_id"])
        if obj["class"] == "item":
            colour, label = group_colour(obj.get("cluster_id")), f"I{oid}"
        else:
            groups = receives.get(oid)
            colour, label = (group_colour(groups[0]) if groups else UNASSIGNED_RGB), f"C{oid}"
        for det in obj.get("detections", []):
            boxes_by_frame.setdefault(det["image_name"], []).append((np.asarray(det["box_xyxy"], float), colour, label))

    for index, (name, image) in enumerate(frames):
        r, c = divmod(index, columns)
        x0, y0 = pad + c * (thumb_width_px + pad), pad + r * (thumb_h + pad)
        scale = min(thumb_width_px / image.shape[1], thumb_h / image.shape[0])
        fit_w = min(thumb_width_px, max(1, int(round(image.shape[1] * scale))))
        fit_h = min(thumb_h, max(1, int(round(image.shape[0] * scale))))
        thumb = cv2.resize(image, (fit_w, fit_h), interpolation=cv2.INTER_AREA)
        thumb = np.ascontiguousarray(thumb)
        for box, colour, label in boxes_by_frame.get(name, []):
            bx0, by0, bx1, by1 = (box * scale).round().astype(int)
            cv2.rectangle(thumb, (bx0, by0), (bx1, by1), colour, 2)
            cv2.putText(thumb, label, (bx0 + 2, max(by0 - 3, 10)), FONT, 0.4, colour, 1, cv2.LINE_AA)
        cv2.putText(thumb, name, (4, fit_h - 6), FONT, 0.45, TEXT_RGB, 1, cv2.LINE_AA)
        sheet[y0 : y0 + fit_h, x0 : x0 + fit_w] = thumb

    y = rows * (thumb_h + pad) + pad + line_h - 6
    for colour, text in lines:
        x = pad
        if colour is not None:
            cv2.rectangle(sheet, (x, y - 12), (x + 14, y + 2), colour, -1)
            x += 22
        cv2.putText(sheet, text, (x, y), FONT, 0.45, TEXT_RGB, 1, cv2.LINE_AA)
        y += line_h
    return sheet


def load_session_frames(repository, archive, arm_id: str, session_id: str) -> list[tuple[str, np.ndarray]]:
    """Read a session's frames from the archive, in pulse-width order.

    Frames whose image cannot be read (archive entry missing) are skipped.

    Returns
    -------
    list of (image_name, ndarray of shape (H, W, 3), uint8, RGB)

    Raises
    ------
    UnknownSession
        If the session has no stored frame.
    """
    out = []
    for frame in repository.session_frames(arm_id, session_id):
        uri = frame.get("image_uri")
        if not uri:
            continue
        try:
            # by its key, not the stored URI, which names the data directory of the time
            out.append((frame["image_name"], decode_image(archive.get(DiskArchive.key_of(arm_id, session_id, frame["image_name"])))))
        except (OSError, KeyError, ValueError):
            continue
    return out


def session_overview_png(result: Mapping, repository, archive, **kwargs) -> bytes:
    """The overview PNG of a rich trigger result (frames read through ``repository`` and ``archive``).

    Raises
    ------
    UnknownSession
        If the session has no stored frame.
    """
    frames = load_session_frames(repository, archive, result["arm_id"], result["session_id"])
    return encode_png(render_overview(frames, result, **kwargs))


def write_overview(result: Mapping, repository, archive, out_path: str | Path, **kwargs) -> Path:
    """Write the overview PNG of a rich trigger result to ``out_path`` (parents created)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(session_overview_png(result, repository, archive, **kwargs))
    return out_path


def frames_from_images(named_images: Iterable[tuple[str, bytes]]) -> list[tuple[str, np.ndarray]]:
    """Decode ``(image_name, encoded bytes)`` pairs (helper for the CLI on a session folder)."""
    return [(name, decode_image(data)) for name, data in named_images]
