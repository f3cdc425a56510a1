"""Simulated sessions for the benchmarks, the demo and the load test, rendered out of process.

The renderer loads VTK's OpenGL libraries; a process that has them crashes when torch's
Triton is imported later (see :func:`simulate_isolated`), so these helpers render in a
spawned child process and import nothing heavy themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _simulate(out_dir: str, seed: int, kwargs: dict) -> str:
    from sorterbot_cloud.sim import simulate_session

    return str(simulate_session(out_dir, seed, progress=False, **kwargs))


def simulate_isolated(out_dir: str | Path, seed: int, **kwargs) -> Path:
    """Run :func:`sorterbot_cloud.sim.simulate_session` in a fresh (spawned) process.

    The renderer loads VTK's OpenGL libraries; once they are in a process, importing
    torch's Triton (which torchvision's detection ops pull in) crashes it with a
    segmentation fault (seen with vtk 9 and triton 3 wheels). Rendering in a child
    process keeps the service process free of VTK.

    Returns
    -------
    Path
        The ``ground_truth.json`` written.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return Path(pool.submit(_simulate, str(out_dir), int(seed), dict(kwargs)).result())


def simulated_session(cache: Path, seed: int, heldout: bool = True, **kwargs) -> Path:
    """A simulated session folder for ``seed`` (rendered once, in a child process, then
    reused from ``cache``); item types and table textures held out of training
    (``heldout``), or those the shipped models were trained on. The folder name carries
    the seed, the scene content and :data:`sorterbot_cloud.sim.scene.SCENE_VERSION`.

    Returns
    -------
    Path
        The session folder (``<pw>.jpg`` frames and ``ground_truth.json``).
    """
    from sorterbot_cloud.sim.scene import SCENE_VERSION

    tag = "_".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    # the scene version keeps sessions laid out by an older generator out of the cache
    folder = Path(cache) / f"{'' if heldout else 'known_'}seed{seed}_scene{SCENE_VERSION}{'_' + tag if tag else ''}"
    if not (folder / "ground_truth.json").exists():
        simulate_isolated(folder, seed, heldout=heldout, session_id=f"sim_{seed}", contact_sheet=False, **kwargs)
    return folder


def session_spec(seed: int) -> dict:
    """Scene content of an evaluation session, drawn from its seed: 2 to 4 item types,
    3 to 8 items (at least one per type), 1 to 4 containers."""
    rng = np.random.default_rng(seed)
    n_types = int(rng.integers(2, 5))
    n_items = int(rng.integers(max(3, n_types), 9))
    n_containers = int(rng.integers(1, 5))
    return {"n_items": n_items, "n_item_types": n_types, "n_containers": n_containers}


__all__ = ["session_spec", "simulate_isolated", "simulated_session"]
