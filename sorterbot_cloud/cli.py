"""``sorterbot-cloud`` command line.

Sub-commands live next to the code they drive and are attached here lazily, so
``sorterbot-cloud --help`` does not import torch.
"""

from __future__ import annotations

import importlib

import click

#: command name -> "module:attribute" of a click command or group.
COMMANDS = {
    "serve": "sorterbot_cloud.service_cli:serve",
    "replay": "sorterbot_cloud.service_cli:replay",
    "demo": "sorterbot_cloud.service_cli:demo",
    "overview": "sorterbot_cloud.service_cli:overview",
    "bench": "sorterbot_cloud.bench:bench",
    "evaluate-sessions": "sorterbot_cloud.bench:evaluate_sessions",
    "tune-grouping": "sorterbot_cloud.bench:tune_grouping",
    "pool-sessions": "sorterbot_cloud.bench:pool_sessions",
    "simulate": "sorterbot_cloud.sim.cli:simulate",
    "db": "sorterbot_cloud.db.cli:db",
    "detector": "sorterbot_cloud.onnx_cli:detector",
    "embedder": "sorterbot_cloud.onnx_cli:embedder",
    "train-detector": "locator.cli:train_detector",
    "train-refine-head": "locator.cli:train_refine_head_command",
    "evaluate-detector": "locator.cli:evaluate_detector",
    "bench-detector": "locator.cli:bench_detector_command",
    "export-detector": "locator.cli:export_detector",
    "convert-voc": "locator.cli:convert_voc",
    "merge-coco": "locator.cli:merge_coco_command",
    "average-detectors": "locator.cli:average_detectors_command",
    "synth-frames": "locator.cli:synth_frames",
    "adapt-detector": "locator.cli:adapt_detector_command",
    "train-embedder": "vectorizer.cli:train_embedder",
    "evaluate-embedder": "vectorizer.cli:evaluate_embedder",
    "crops-from-coco": "vectorizer.cli:crops_from_coco",
    "crops-from-voc": "vectorizer.cli:crops_from_voc",
    "calibrate-grouping": "vectorizer.cli:calibrate_grouping",
    "evaluate-real-grouping": "vectorizer.cli:evaluate_real_grouping",
}


class LazyGroup(click.Group):
    """A click group that imports each sub-command only when it is run."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a component not built yet
            if exc.name and module_name.startswith(exc.name):
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup)
def main() -> None:
    """SorterBot Cloud: detect, embed, deduplicate, cluster and plan for sorting arms."""


if __name__ == "__main__":
    main()
