"""Pixels to arm coordinates: where on the table is the object behind a box?

Two conversions (docs/design.rst, Arm constants and geometry), chosen by
:func:`~sorterbot_cloud.geometry.placement.locate`:

- **legacy** (the constants carry no ``camera`` block): the original SorterBot formulas
  (:mod:`~sorterbot_cloud.geometry.legacy`). ``pw0``/``pw1`` are exactly their values;
  the planar position used by dedup and the planner is in legacy pixel units,
  consistent within one session.

- **calibrated** (a :class:`~sorterbot_cloud.camera.CameraModel` is given): the ground
  footprint centre of each box from an upright elliptic prism whose projected silhouette
  has the same box (:mod:`~sorterbot_cloud.geometry.calibrated`). After deduplication
  one 3D shape per object is fitted to all its boxes across frames
  (:mod:`~sorterbot_cloud.geometry.refine`), which resolves what a single box cannot:
  on the simulator catalogue the position error drops from p95 ~25 mm (single-frame
  averages) to ~5 mm.

Modules, one concept each, each importing only those listed before it:

- :mod:`~sorterbot_cloud.geometry.located`: :class:`~sorterbot_cloud.geometry.located.LocatedDetection`
  and box sides cut by the image border;
- :mod:`~sorterbot_cloud.geometry.solver`: the batched Levenberg-Marquardt solver;
- :mod:`~sorterbot_cloud.geometry.shapes`: projected boxes of the shape models (per-frame
  camera terms; prism, cuboid, bowl, sphere, revolved);
- :mod:`~sorterbot_cloud.geometry.legacy`: the original SorterBot formulas;
- :mod:`~sorterbot_cloud.geometry.calibrated`: calibrated single-frame placement;
- :mod:`~sorterbot_cloud.geometry.refine`: the multi-frame refinement;
- :mod:`~sorterbot_cloud.geometry.placement`: ``locate`` / ``locate_groups``, dispatching
  to the legacy or the calibrated conversion.

The public names are re-exported here (``__all__``). The code reads each constant in
the module that defines it: to change one at run time, set it there (e.g.
``geometry.refine.REFINE_MODELS``), not on this package.
"""

from __future__ import annotations

from sorterbot_cloud.geometry.calibrated import BOX_SIGMA_PX, FIT_PRIORS, fit_prisms
from sorterbot_cloud.geometry.legacy import LEGACY_ANGLE_SCALES, legacy_pulse_widths
from sorterbot_cloud.geometry.located import (
    BORDER_MARGIN_PX,
    BORDER_MARGIN_REL,
    TRUNCATED_WEIGHT_FACTOR,
    LocatedDetection,
)
from sorterbot_cloud.geometry.placement import locate, locate_groups
from sorterbot_cloud.geometry.refine import (
    REFINE_HUBER_SIGMAS,
    REFINE_MAX_MEAN_COST,
    REFINE_MODELS,
    REFINE_PARAM_PENALTY,
    REFINE_SCHEDULE,
    REFINE_SIGMA_PX,
    REFINE_SIGMA_PX_BY_CLASS,
    REFINE_START_ITERATIONS,
    REST_LOG_SIGMA,
    ObjectShape,
    refine_objects,
    rest_residual,
)
from sorterbot_cloud.geometry.shapes import BOWL_RING_FRACTIONS, prism_boxes

__all__ = [
    "BORDER_MARGIN_PX",
    "BORDER_MARGIN_REL",
    "BOWL_RING_FRACTIONS",
    "BOX_SIGMA_PX",
    "FIT_PRIORS",
    "LEGACY_ANGLE_SCALES",
    "REFINE_HUBER_SIGMAS",
    "REFINE_MAX_MEAN_COST",
    "REFINE_MODELS",
    "REFINE_PARAM_PENALTY",
    "REFINE_SCHEDULE",
    "REFINE_SIGMA_PX",
    "REFINE_SIGMA_PX_BY_CLASS",
    "REFINE_START_ITERATIONS",
    "REST_LOG_SIGMA",
    "TRUNCATED_WEIGHT_FACTOR",
    "LocatedDetection",
    "ObjectShape",
    "fit_prisms",
    "legacy_pulse_widths",
    "locate",
    "locate_groups",
    "prism_boxes",
    "refine_objects",
    "rest_residual",
]
