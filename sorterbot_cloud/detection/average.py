"""Weight averages of detector files fine-tuned from one start ("model soups").

Fine-tunes of one detector stay in one basin of the loss, so the weighted mean of their
parameters is itself a working detector that often keeps part of each run's gains
(Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time", ICML 2022; Izmailov et al., "Averaging
Weights Leads to Wider Optima and Better Generalization", UAI 2018). The shipped detector
is such an average of a fine-tune on real tables and the file it started from
(weights/README.md): it keeps most of the fine-tune's real-photo gains and the start's
recall on simulated tables. ``prefixes`` restricts the mean to some layers (for
example ``roi_heads.``) and takes every other tensor from the first file: a layer-wise mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .torchvision_detector import load_detector_file


def average_detector_files(inputs: Sequence[tuple[str | Path, float]], prefixes: Sequence[str] = ()) -> dict:
    """The weighted mean of detector files' parameters, as a detector file's contents.

    Floating-point tensors (weights, biases and BatchNorm running statistics) are averaged
    in float32 with the normalised weights and stored back in their own dtype (float16 in
    exported files); integer tensors (BatchNorm's ``num_batches_tracked``) and every tensor
    outside ``prefixes`` come from the first file unchanged.

    Parameters
    ----------
    inputs : sequence of (path, weight)
        Detector files written by :meth:`TorchvisionDetector.save` or ``export-detector``,
        all of one architecture (equal ``config`` and ``state_dict`` keys and shapes);
        weights are finite and >= 0 with a positive sum (they are normalised).
    prefixes : sequence of str, optional
        Average only the tensors whose name starts with one of these; empty: all.

    Returns
    -------
    dict
        ``{"format", "config", "state_dict"}`` (the first file's format and config), ready
        for ``torch.save``.

    Raises
    ------
    ValueError
        If fewer than one input is given, a weight is negative or not finite, the weights
        sum to zero, a file is not a detector file, or the files' configs, tensor names or
        shapes differ, or a prefix matches no tensor.
    FileNotFoundError
        If a file does not exist.
    """
    if not inputs:
        raise ValueError("at least one detector file is needed")
    weights = torch.tensor([float(w) for _, w in inputs], dtype=torch.float64)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or not float(weights.sum()) > 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights.tolist()}")
    weights = weights / weights.sum()
    blobs = [load_detector_file(p) for p, _ in inputs]
    first = blobs[0]
    for (path, _), blob in zip(inputs[1:], blobs[1:], strict=True):
        if blob["config"] != first["config"]:
            raise ValueError(f"{path} has another detector config than {inputs[0][0]}")
        if blob["state_dict"].keys() != first["state_dict"].keys():
            raise ValueError(f"{path} has other tensors than {inputs[0][0]}")
        for name, tensor in first["state_dict"].items():
            if blob["state_dict"][name].shape != tensor.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(blob['state_dict'][name].shape)}, "
                                 f"{inputs[0][0]} {tuple(tensor.shape)}")
    prefixes = tuple(prefixes)
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in first["state_dict"]):
            raise ValueError(f"prefix {prefix!r} matches no tensor of {inputs[0][0]}")
    state_dict = {}
    for name, tensor in first["state_dict"].items():
        if not tensor.is_floating_point() or (prefixes and not name.startswith(prefixes)):
            state_dict[name] = tensor.clone()
            continue
        mean = sum(float(w) * blob["state_dict"][name].float() for w, blob in zip(weights, blobs, strict=True))
        state_dict[name] = mean.to(tensor.dtype)
    return {"format": first["format"], "config": dict(first["config"]), "state_dict": state_dict}
