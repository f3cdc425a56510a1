"""The arm simulator: procedural scenes, an offscreen renderer through the camera model,
sessions with ground truth, and COCO / item-crop datasets.

Heavy imports (PyVista/VTK) happen on first use of the public functions, so importing
``sorterbot_cloud.sim`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "simulate_session": "sorterbot_cloud.sim.session",
    "make_contact_sheet": "sorterbot_cloud.sim.session",
    "frame_boxes": "sorterbot_cloud.sim.session",
    "DEFAULT_PULSE_WIDTHS": "sorterbot_cloud.sim.session",
    "export_coco_dataset": "sorterbot_cloud.sim.datasets",
    "export_item_crops": "sorterbot_cloud.sim.datasets",
    "render_views": "sorterbot_cloud.sim.views",
    "SceneRenderer": "sorterbot_cloud.sim.render",
    "generate_scene": "sorterbot_cloud.sim.scene",
    "ITEM_TYPES": "sorterbot_cloud.sim.catalog",
    "CONTAINER_TYPES": "sorterbot_cloud.sim.catalog",
    "DISTRACTOR_TYPES": "sorterbot_cloud.sim.catalog",
    "TRAIN_ITEM_TYPES": "sorterbot_cloud.sim.catalog",
    "HELDOUT_ITEM_TYPES": "sorterbot_cloud.sim.catalog",
    "TRAIN_TEXTURES": "sorterbot_cloud.sim.textures",
    "HELDOUT_TEXTURES": "sorterbot_cloud.sim.textures",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sorterbot_cloud.sim' has no attribute {name!r}")
