"""Simulator speed benchmark: frames per second of a full session pipeline.

A frame costs: VTK render + screenshot, photo effects, JPEG encoding and ground-truth
boxes. Scene set-up (texture generation, shadow baking, mesh upload) is counted once
per session, as in :func:`~sorterbot_cloud.sim.session.simulate_session`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def benchmark(width_px: int = 1640, height_px: int = 1232, repeats: int = 3, seed: int = 0, n_frames: int = 20) -> dict:
    """Time ``repeats`` simulated sessions of ``n_frames`` frames each.

    Returns
    -------
    dict
        ``fps_median`` (frames per second over whole sessions, median over repeats),
        ``session_s`` (list), and per-stage medians in ms per frame: ``render_ms``,
        ``effects_ms``, ``encode_ms``, ``boxes_ms``, ``setup_ms`` (per session).
    """
    from sorterbot_cloud.camera import ArmConstants
    from sorterbot_cloud.sim.catalog import TRAIN_ITEM_TYPES
    from sorterbot_cloud.sim.render import PhotoParams, SceneRenderer, encode_jpeg, photo_effects
    from sorterbot_cloud.sim.scene import choose_item_types, generate_scene
    from sorterbot_cloud.sim.session import frame_boxes

    constants = ArmConstants.reference()
    pws = np.linspace(1000, 1950, n_frames)
    stages: dict[str, list[float]] = {"render_ms": [], "effects_ms": [], "encode_ms": [], "boxes_ms": [], "setup_ms": []}
    sessions = []
    with SceneRenderer(width_px, height_px) as renderer, tempfile.TemporaryDirectory() as tmp:
        renderer.set_scene(generate_scene(np.random.default_rng(seed + 999), ["coin"], 1))  # warm-up: GL context, shaders
        renderer.render(0.0)
        for k in range(repeats):
            rng = np.random.default_rng(seed + k)
            t_session = time.perf_counter()
            scene = generate_scene(rng, choose_item_types(rng, 6, 3, TRAIN_ITEM_TYPES), 2, n_distractors=1)
            renderer.set_scene(scene)
            stages["setup_ms"].append((time.perf_counter() - t_session) * 1e3)
            for pw in pws:
                theta = constants.theta_of_pw(float(pw))
                t0 = time.perf_counter()
                image = renderer.render(theta)
                t1 = time.perf_counter()
                params = PhotoParams.random(rng)
                image = photo_effects(image, params, rng)
                t2 = time.perf_counter()
                Path(tmp, f"{pw:.0f}.jpg").write_bytes(encode_jpeg(image, params.jpeg_quality))
                t3 = time.perf_counter()
                frame_boxes(scene.objects, constants.camera, theta, width_px, height_px)
                t4 = time.perf_counter()
                for key, dt in zip(("render_ms", "effects_ms", "encode_ms", "boxes_ms"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    stages[key].append(dt * 1e3)
            sessions.append(time.perf_counter() - t_session)
    fps = [n_frames / s for s in sessions]
    out = {key: round(statistics.median(v), 1) for key, v in stages.items()}
    out.update(fps_median=round(statistics.median(fps), 2), fps_all=[round(f, 2) for f in fps], session_s=[round(s, 2) for s in sessions],
               width_px=width_px, height_px=height_px, n_frames=n_frames, repeats=repeats)
    return out
