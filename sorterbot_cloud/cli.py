"""``sorterbot-cloud`` command line: one tree of grouped commands.

::

    sorterbot-cloud serve | demo | replay | overview
    sorterbot-cloud detector train | train-refine-head | adapt | evaluate | bench | export | export-weights
                             | average | convert-voc | merge-coco | synth-frames
    sorterbot-cloud embedder train | evaluate | calibrate | evaluate-real | crops-from-coco | crops-from-voc | export
    sorterbot-cloud sim session | dataset | crops | views | types | bench
    sorterbot-cloud eval sessions | pool | tune
    sorterbot-cloud bench ingest | trigger | load | all
    sorterbot-cloud db migrate | status | sessions | reembed | bench

Sub-commands live next to the code they drive and are imported only when run, so
``sorterbot-cloud --help`` does not import torch. The flat names of earlier releases
(``train-detector``, ``evaluate-sessions``, ``simulate`` ...) are still accepted
(:data:`FORMER_NAMES`) and hidden from the listing.
"""

from __future__ import annotations

import importlib
from typing import Mapping, Union

import click

#: A command: ``"module:attribute"`` of a click command or group, or a mapping of
#: sub-command names to commands (a group).
Target = Union[str, Mapping[str, "Target"]]

#: The command tree.
COMMANDS: dict[str, Target] = {
    "serve": "sorterbot_cloud.service_cli:serve",
    "demo": "sorterbot_cloud.service_cli:demo",
    "replay": "sorterbot_cloud.service_cli:replay",
    "overview": "sorterbot_cloud.service_cli:overview",
    "detector": {
        "train": "sorterbot_cloud.detection.cli:train_detector",
        "train-refine-head": "sorterbot_cloud.detection.cli:train_refine_head_command",
        "adapt": "sorterbot_cloud.detection.cli:adapt_detector_command",
        "evaluate": "sorterbot_cloud.detection.cli:evaluate_detector",
        "bench": "sorterbot_cloud.detection.cli:bench_detector_command",
        "export": "sorterbot_cloud.onnx_cli:detector_export",
        "export-weights": "sorterbot_cloud.detection.cli:export_detector",
        "average": "sorterbot_cloud.detection.cli:average_detectors_command",
        "convert-voc": "sorterbot_cloud.detection.cli:convert_voc",
        "merge-coco": "sorterbot_cloud.detection.cli:merge_coco_command",
        "synth-frames": "sorterbot_cloud.detection.cli:synth_frames",
    },
    "embedder": {
        "train": "sorterbot_cloud.embedding.cli:train_embedder",
        "evaluate": "sorterbot_cloud.embedding.cli:evaluate_embedder",
        "calibrate": "sorterbot_cloud.embedding.cli:calibrate_grouping",
        "evaluate-real": "sorterbot_cloud.embedding.cli:evaluate_real_grouping",
        "crops-from-coco": "sorterbot_cloud.embedding.cli:crops_from_coco",
        "crops-from-voc": "sorterbot_cloud.embedding.cli:crops_from_voc",
        "export": "sorterbot_cloud.onnx_cli:embedder_export",
    },
    "sim": "sorterbot_cloud.sim.cli:simulate",
    "eval": {
        "sessions": "sorterbot_cloud.bench:evaluate_sessions",
        "pool": "sorterbot_cloud.bench:pool_sessions",
        "tune": "sorterbot_cloud.bench:tune_grouping",
    },
    "bench": "sorterbot_cloud.bench:bench",
    "db": "sorterbot_cloud.db.cli:db",
}

#: Help lines of the groups that :data:`COMMANDS` defines as mappings.
GROUP_HELP = {
    "detector": "The detector: train, adapt to your table, evaluate, time and export it.",
    "embedder": "The item embedder: train, evaluate, calibrate the distance between kinds, export.",
    "eval": "End-to-end scores on simulated sessions, pooling and grouping tuning.",
}

#: Names of earlier releases -> their path in :data:`COMMANDS`.
FORMER_NAMES: dict[str, tuple[str, ...]] = {
    "train-detector": ("detector", "train"),
    "train-refine-head": ("detector", "train-refine-head"),
    "adapt-detector": ("detector", "adapt"),
    "evaluate-detector": ("detector", "evaluate"),
    "bench-detector": ("detector", "bench"),
    "export-detector": ("detector", "export-weights"),
    "average-detectors": ("detector", "average"),
    "convert-voc": ("detector", "convert-voc"),
    "merge-coco": ("detector", "merge-coco"),
    "synth-frames": ("detector", "synth-frames"),
    "train-embedder": ("embedder", "train"),
    "evaluate-embedder": ("embedder", "evaluate"),
    "calibrate-grouping": ("embedder", "calibrate"),
    "evaluate-real-grouping": ("embedder", "evaluate-real"),
    "crops-from-coco": ("embedder", "crops-from-coco"),
    "crops-from-voc": ("embedder", "crops-from-voc"),
    "simulate": ("sim",),
    "evaluate-sessions": ("eval", "sessions"),
    "pool-sessions": ("eval", "pool"),
    "tune-grouping": ("eval", "tune"),
}


def _load(target: str) -> click.Command | None:
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # an optional component that is not installed
        if exc.name and module_name.startswith(exc.name):
            return None
        raise
    return getattr(module, attr)


def resolve(path: tuple[str, ...]) -> click.Command | None:
    """The command at ``path`` in :data:`COMMANDS` (e.g. ``("detector", "train")``), or None.

    Raises
    ------
    ModuleNotFoundError
        If the command's module fails to import for another reason than being absent.
    """
    node: Target = COMMANDS
    for name in path:
        if not isinstance(node, Mapping) or name not in node:
            return None
        node = node[name]
    if isinstance(node, Mapping):
        return LazyGroup(name=path[-1], tree=node, help=GROUP_HELP.get(path[-1]))
    return _load(node)


class LazyGroup(click.Group):
    """A click group over a mapping of :data:`COMMANDS`, importing each command when it is run.

    Parameters
    ----------
    tree : mapping
        Sub-command names to targets (see :data:`Target`).
    former_names : mapping, optional
        Hidden names accepted for compatibility -> their path in :data:`COMMANDS`.
    """

    def __init__(self, *args, tree: Mapping[str, Target], former_names: Mapping[str, tuple[str, ...]] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tree = tree
        self.former_names = dict(former_names or {})

    def list_commands(self, ctx):
        return list(self.tree)

    def get_command(self, ctx, name):
        if name in self.tree:
            node = self.tree[name]
            if isinstance(node, Mapping):
                return LazyGroup(name=name, tree=node, help=GROUP_HELP.get(name))
            return _load(node)
        if name in self.former_names:
            return resolve(self.former_names[name])
        return None


main = LazyGroup(
    name="sorterbot-cloud",
    tree=COMMANDS,
    former_names=FORMER_NAMES,
    help="SorterBot Cloud: detect, embed, deduplicate, cluster and plan for sorting arms.",
)


if __name__ == "__main__":
    main()
