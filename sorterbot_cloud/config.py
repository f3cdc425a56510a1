"""Settings, built once from a YAML config file and the environment.

Nothing reads the environment at import time: call :meth:`Settings.load`.
Precedence: keyword overrides > environment variables > config file > defaults.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, get_args, get_type_hints

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "config.yaml"
MODES = ("local", "aws-dev", "production")


@dataclass(frozen=True)
class Settings:
    """Service settings.

    Parameters
    ----------
    mode : {'local', 'aws-dev', 'production'}
    pg_conn : str or None
        libpq connection string; None starts the embedded PostgreSQL under ``data_dir``.
    data_dir : Path
        Embedded database, image archive and overviews live here.
    max_body_bytes : int
        Largest accepted request body.
    detector_weights, embedder_weights : Path
        Model files (each with a ``.json`` sidecar).
    detector_score_threshold : float
        Detections below this score are dropped.
    detector_nms_iou : float
        IoU threshold of the detector's per-class NMS.
    detector_min_size_px : int
        Shorter side (pixels) the detector resizes frames to.
    detector_box_refine_steps : int
        0 or 1: regress the detector's final boxes once more, with the refine head the
        weights file carries (the shipped one does), else with its own box head
        (:class:`sorterbot_cloud.detection.torchvision_detector.DetectorConfig`); tightens container boxes.
    dedup_distance_factor : float
        Two detections merge when their footprint centres are closer than this factor
        times the larger estimated object size.
    dedup_min_view_support_item, dedup_min_view_support_container : float
        An object detected on too few of the frames that should show it is dropped
        (:func:`sorterbot_cloud.dedup.view_support`); 0 keeps every object.
    crop_margin : float
        Context margin of the item crops that are embedded, as a fraction of the box's
        width and height added on each side (:func:`sorterbot_cloud.embedding.crop_items`). Default 0.1,
        the margin the shipped embedder was trained with.
    kmeans_n_init, random_state : int
        K-Means restarts and seed.
    grouping_size_weight, grouping_height_weight : float
        Weight of an item's fitted footprint size and height (log mm) next to its
        embedding when items are grouped in calibrated mode
        (:func:`sorterbot_cloud.planner.item_features`); 0 groups on embeddings alone.
        Defaults 1.0 and 0.0: chosen with the shipped detector and embedder on tuning
        sessions never used for the reported figures (seeds 3000+ held-out and 9000+
        known kinds, ``sorterbot-cloud tune-grouping``; README). The height weight was
        0.25 until the rounded-bowl shape model (session 9), with which 0 sorted best.
    grouping_distance : float or None
        Cosine-scale distance above which two groups of items are different kinds when
        their shapes are appended (:func:`sorterbot_cloud.planner.group_items`); None uses
        the embedder's ``group_distance``, calibrated on crops alone (no shape terms).
        Default 0.125: with the shipped detector (its trained refine head) and the
        weights above, among the best of 0.125..0.2 on the tuning sessions (40 + 40,
        ``sorterbot-cloud tune-grouping --n 40``) and no worse on 40 + 40 further ones
        (session 8, README); 0.15 was the choice for the detector without the head.
    grouping_colour_weight : float
        Weight of an item's median CIELab colour (per 100 units, :func:`sorterbot_cloud.embedding.colour.colour_lab`)
        next to its embedding when items are grouped, in both modes
        (:func:`sorterbot_cloud.planner.item_features`); 0 leaves colour out. Items stored
        without a colour (before migration 0002) are grouped without it until
        ``sorterbot-cloud db reembed`` measures it.
    legacy_camera : {'reference', 'none'}
        Legacy mode (no camera in the constants): with ``reference`` the reference arm's
        camera (:meth:`sorterbot_cloud.camera.ArmConstants.reference`, with the session's
        rotation range) is assumed wherever metric geometry is needed besides positions,
        which keep the legacy formulas: each item's size and height for grouping
        (``trigger.with_nominal_shapes``) and which frames should show an object for
        view support (:func:`sorterbot_cloud.dedup.merge`). ``none``: legacy sessions
        group on embeddings alone and count frames by a bearing window.
    api_token : str or None
        Bearer token required on every route but ``/healthz`` when set.
    control_panel_host : str or None
        Where log records are POSTed when set.
    deploy_region : str or None
    s3_bucket : str or None
        Explicit bucket; otherwise ``sorterbot-<RESOURCE_SUFFIX>`` from SSM in aws modes.
    aws_endpoint_url : str or None
        Override for S3/SSM endpoints (moto in tests).
    torch_threads : int or None
        torch intra-op threads for the detector and embedder (``torch.set_num_threads``),
        set once when the app loads its models; None keeps torch's default (one per core,
        or ``OMP_NUM_THREADS``). On a machine shared with other work, 1 avoids OpenMP
        threads waiting on a busy sibling core.
    inference_runtime : {'torch', 'onnxruntime'}
        What runs the detector and the embedder: PyTorch eager, or their exported ONNX
        graphs in ONNX Runtime (:mod:`sorterbot_cloud.onnx_runtime`; graphs from
        ``sorterbot-cloud detector export`` next to the weights, else exported on first
        load into ``<data_dir>/onnx``). ``TORCH_THREADS`` also sets ONNX Runtime's
        intra-op threads. Default onnxruntime: the same detections and session results as
        eager (docs/onnx.rst) in less time and under half the memory.
    pool_max_size : int
        Database connection pool size.
    ingest_max_in_flight : int
        Model requests (ingest, ``/predict``) one worker process runs at once; more wait in
        line (:mod:`sorterbot_cloud.api.admission`). 0 turns admission control off.
    ingest_max_queued : int
        Model requests that may wait for a slot per worker process; more are answered 503
        with ``Retry-After`` (nothing stored; the client posts again).
    ingest_queue_timeout_s : float
        Longest wait for a slot, seconds; a request still waiting then is answered 503.
    """

    mode: str = "local"
    pg_conn: str | None = None
    data_dir: Path = PROJECT_ROOT / "var"
    max_body_bytes: int = 16 * 1024 * 1024
    detector_weights: Path = PROJECT_ROOT / "weights" / "detector.pt"
    embedder_weights: Path = PROJECT_ROOT / "weights" / "embedder.pt"
    detector_score_threshold: float = 0.5
    detector_nms_iou: float = 0.5
    detector_min_size_px: int = 512
    detector_box_refine_steps: int = 1
    dedup_distance_factor: float = 0.6
    dedup_min_view_support_item: float = 0.25
    dedup_min_view_support_container: float = 0.6
    crop_margin: float = 0.1
    kmeans_n_init: int = 10
    grouping_size_weight: float = 1.0
    grouping_height_weight: float = 0.0
    grouping_distance: float | None = 0.125
    grouping_colour_weight: float = 0.0
    legacy_camera: str = "reference"
    random_state: int = 0
    api_token: str | None = None
    control_panel_host: str | None = None
    deploy_region: str | None = None
    s3_bucket: str | None = None
    aws_endpoint_url: str | None = None
    pool_max_size: int = 8
    torch_threads: int | None = None
    inference_runtime: str = "onnxruntime"
    log_json: bool | None = None
    ingest_max_in_flight: int = 2
    ingest_max_queued: int = 8
    ingest_queue_timeout_s: float = 10.0


    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"MODE must be one of {MODES}, got {self.mode!r}")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"TORCH_THREADS must be >= 1, got {self.torch_threads}")
        if self.legacy_camera not in ("reference", "none"):
            raise ValueError(f"legacy_camera must be 'reference' or 'none', got {self.legacy_camera!r}")
        if self.inference_runtime not in ("torch", "onnxruntime"):
            raise ValueError(f"INFERENCE_RUNTIME must be 'torch' or 'onnxruntime', got {self.inference_runtime!r}")
        if not (self.grouping_size_weight >= 0 and self.grouping_height_weight >= 0):
            raise ValueError("grouping_size_weight and grouping_height_weight must be >= 0")
        if not (math.isfinite(self.grouping_colour_weight) and self.grouping_colour_weight >= 0):
            raise ValueError(f"grouping_colour_weight must be a finite number >= 0, got {self.grouping_colour_weight}")
        if not (math.isfinite(self.crop_margin) and 0.0 <= self.crop_margin <= 1.0):
            raise ValueError(f"crop_margin must be in [0, 1], got {self.crop_margin}")
        if self.detector_box_refine_steps not in (0, 1):
            raise ValueError(f"detector_box_refine_steps must be 0 or 1, got {self.detector_box_refine_steps}")
        if self.ingest_max_in_flight < 0 or self.ingest_max_queued < 0:
            raise ValueError("ingest_max_in_flight and ingest_max_queued must be >= 0 "
                             f"(got {self.ingest_max_in_flight} and {self.ingest_max_queued})")
        if not (math.isfinite(self.ingest_queue_timeout_s) and self.ingest_queue_timeout_s > 0):
            raise ValueError(f"ingest_queue_timeout_s must be a positive number of seconds, got {self.ingest_queue_timeout_s}")
        if self.grouping_distance is not None and not 0.0 < self.grouping_distance <= 2.0:
            raise ValueError(f"grouping_distance must be in (0, 2] or null, got {self.grouping_distance}")

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> "Settings":
        """Build settings from a YAML file, the environment and explicit overrides.

        Parameters
        ----------
        config_file : path, optional
            Defaults to ``$SORTERBOT_CONFIG`` or the repository's ``config.yaml``.
        environ : mapping, optional
            Defaults to ``os.environ``.
        **overrides
            Field values that win over everything else.

        Raises
        ------
        ValueError
            On an unknown key in the file or a value of the wrong type.
        """
        environ = os.environ if environ is None else environ
        path = Path(config_file or environ.get("SORTERBOT_CONFIG") or DEFAULT_CONFIG_FILE)
        values: dict[str, Any] = {}
        if path.exists():
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path} must hold a mapping")
            values.update(loaded)
        for env_key, name in cls.ENV.items():
            if environ.get(env_key) not in (None, ""):
                values[name] = environ[env_key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        hints = get_type_hints(cls)
        typed: dict[str, Any] = {}
        for name, value in values.items():
            # the field's declared type, optional or not (``int | None`` converts as int)
            kinds = set(get_args(hints[name])) or {hints[name]}
            if type(None) in kinds and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
                typed[name] = None
            elif Path in kinds:
                p = Path(value)
                typed[name] = p if p.is_absolute() else (PROJECT_ROOT / p)
            elif bool in kinds:
                typed[name] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif int in kinds:
                typed[name] = int(value)
            elif float in kinds:
                typed[name] = float(value)
            else:
                typed[name] = value
        return replace(cls(), **typed)

    def apply_torch_threads(self) -> None:
        """Set torch's intra-op threads to ``torch_threads`` (``TORCH_THREADS``) when it is set.

        Called once by every entry point that loads the models (the app, ``db reembed``);
        unset, torch keeps its default (one thread per core, or ``OMP_NUM_THREADS``).
        With ``inference_runtime`` ``onnxruntime`` it does nothing (ONNX Runtime's sessions
        are given ``torch_threads`` when they are built) and torch is not imported.
        """
        if self.torch_threads and self.inference_runtime == "torch":
            import torch  # with onnxruntime, the sessions take TORCH_THREADS themselves and torch stays unloaded

            torch.set_num_threads(int(self.torch_threads))

    @property
    def image_dir(self) -> Path:
        """Archive of original frames (local disk)."""
        return self.data_dir / "images"

    @property
    def overview_dir(self) -> Path:
        """Session overview PNGs."""
        return self.data_dir / "overviews"

    @property
    def pg_data_dir(self) -> Path:
        """Embedded PostgreSQL data directory."""
        return self.data_dir / "pgdata"


#: Environment variable of every setting: its name in upper case (``detector_nms_iou`` is
#: ``DETECTOR_NMS_IOU``). ``SORTERBOT_CONFIG`` names the config file.
Settings.ENV = {f.name.upper(): f.name for f in fields(Settings)}
