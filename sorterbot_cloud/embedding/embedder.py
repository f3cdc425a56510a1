"""Item embedder: ResNet18's penultimate layer, 512 floats per crop, L2-normalised.

The model, its weights file and its preprocessing travel together: a project weights
file ``<name>.pt`` (an fp16 ``state_dict`` of torchvision's ``resnet18`` without its
``fc`` layer) has a JSON sidecar ``<name>.json`` that states the input size and the
normalisation it was trained with.

Weights are looked up in this order, and nothing is ever downloaded:

1. a configured path: ``Settings.embedder_weights`` when it differs from the shipped
   file's path (its default); it must exist;
2. the project's shipped weights, ``weights/embedder.pt`` (trained by
   ``sorterbot-cloud train-embedder`` on simulated, procedural and real item crops;
   its sidecar carries the distance between kinds the grouping uses);
3. torchvision's ImageNet ResNet18 file, when present in the torch cache
   (``torch.hub.get_dir()/checkpoints/resnet18-f37072fd.pth``): a fallback for a
   checkout without the shipped file. It groups items worse and has no calibrated
   distance between kinds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision

from sorterbot_cloud.config import PROJECT_ROOT
from sorterbot_cloud.errors import BadRequest

from .crops import letterbox_batch

log = logging.getLogger(__name__)

#: Length of an embedding: ResNet18's penultimate layer (global average pool) width.
EMBEDDING_DIM = 512
#: Per-channel RGB mean and standard deviation of ImageNet, on pixel values in [0, 1]
#: (torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` preprocessing).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: File name of torchvision's ImageNet ResNet18 weights in ``torch.hub.get_dir()/checkpoints``.
IMAGENET_RESNET18_FILE = "resnet18-f37072fd.pth"
#: Input side used with the ImageNet weights: half of ImageNet's 224, so a crop costs well
#: under 10 ms on a 2-core CPU.
IMAGENET_INPUT_SIZE_PX = 112
#: Input side of the project's own weights when their sidecar does not say otherwise.
DEFAULT_INPUT_SIZE_PX = 64
#: The weights shipped with the project (``Settings.embedder_weights`` default).
SHIPPED_WEIGHTS = PROJECT_ROOT / "weights" / "embedder.pt"


def build_resnet18() -> torch.nn.Module:
    """Return torchvision's ResNet18, randomly initialised, with ``fc`` replaced by identity.

    Its output is the 512-wide global-average-pooled feature (the penultimate layer).
    """
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    return model


def focus_mask(size_px: int, radii: tuple[float, float]) -> torch.Tensor:
    """Radial weight that keeps the crop centre (the item) and fades out the table around it.

    1 within ``radii[0]`` of the side from the centre, falling linearly to 0 at
    ``radii[1]`` (corners are at 0.707). Multiplying a normalised input by it turns the
    border into the mean colour, as the letterbox bands already are.

    Returns
    -------
    Tensor of shape (1, 1, S, S), float32
    """
    inner, outer = radii
    coords = torch.arange(size_px, dtype=torch.float32) + 0.5 - size_px / 2
    r = torch.hypot(coords[None, :], coords[:, None]) / size_px
    return ((outer - r) / (outer - inner)).clamp(0.0, 1.0)[None, None]


def sidecar_path(weights_path: str | Path) -> Path:
    """Return the JSON sidecar path of a weights file (same name, ``.json`` suffix)."""
    return Path(weights_path).with_suffix(".json")


@dataclass(frozen=True)
class WeightsChoice:
    """Which weights file :func:`resolve_weights` picked, and why.

    Parameters
    ----------
    path : Path
    source : {'configured', 'torch-cache', 'shipped'}
    """

    path: Path
    source: str


def resolve_weights(
    configured: str | Path | None,
    *,
    torch_cache_dir: str | Path | None = None,
    shipped: str | Path = SHIPPED_WEIGHTS,
) -> WeightsChoice:
    """Pick the embedder's weights file (see the module docstring for the order).

    Parameters
    ----------
    configured : path or None
        ``Settings.embedder_weights``. A value equal to ``shipped`` (the default setting)
        counts as not configured.
    torch_cache_dir : path, optional
        Torch hub directory; defaults to ``torch.hub.get_dir()``.
    shipped : path
        The project's shipped weights.

    Returns
    -------
    WeightsChoice

    Raises
    ------
    FileNotFoundError
        If a configured path does not exist, or if no weights file is found at all.
    """
    shipped = Path(shipped)
    if configured is not None and Path(configured).resolve() != shipped.resolve():
        path = Path(configured)
        if not path.is_file():
            raise FileNotFoundError(f"configured embedder weights {path} do not exist")
        return WeightsChoice(path, "configured")
    if shipped.is_file():
        return WeightsChoice(shipped, "shipped")
    cache = Path(torch_cache_dir if torch_cache_dir is not None else torch.hub.get_dir())
    imagenet = cache / "checkpoints" / IMAGENET_RESNET18_FILE
    if imagenet.is_file():
        return WeightsChoice(imagenet, "torch-cache")
    raise FileNotFoundError(
        f"no embedder weights: none configured, no {imagenet}, no {shipped} "
        "(train them with `sorterbot-cloud train-embedder`)"
    )


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ResNet18 ``state_dict`` (project fp16 file or torchvision ImageNet file).

    The ``fc.*`` entries of a classifier checkpoint are dropped.

    Raises
    ------
    ValueError
        If the file does not hold a ``state_dict`` of tensors.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a ResNet18 state_dict")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items() if not k.startswith("fc.")}


class Embedder:
    """Batched ResNet18 item embedder.

    Parameters
    ----------
    model : torch.nn.Module
        Maps a float tensor (B, 3, S, S) to (B, 512); put into eval mode here.
    input_size_px : int
        Side ``S`` of the square input: each crop is letterboxed to ``S x S``.
    mean, std : tuple of 3 floats
        RGB normalisation on pixel values in [0, 1].
    batch_size : int
        Crops per forward pass.
    focus_radii : (float, float) or None
        When set, the normalised input is multiplied by :func:`focus_mask`: the table
        around the item fades to the mean colour, so the background (which differs from
        table to table) weighs less than the item. None = the whole crop.
    test_time_views : {1, 2, 4, 8}
        Views of each crop whose features are averaged before normalisation: the crop,
        then its horizontal flip, vertical flip, 180° rotation, then 90° and 270°
        rotations and the two transposes (the symmetries of the square; items lie on the
        table in any orientation). 1 = the crop alone. Cost grows linearly.
    source : str
        Where the weights came from, for logs and health checks.
    group_distance : float, optional
        Cosine distance above which items are of different kinds, calibrated for these
        weights by ``sorterbot-cloud calibrate-grouping``; the planner uses it to choose
        the number of groups. None (torchvision's ImageNet file, uncalibrated weights):
        the planner's largest-gap rule.
    channels_last : bool
        Convert ``model`` to the channels-last (NHWC) layout for inference and feed it
        NHWC batches (:meth:`from_weights` does; embeddings agree to float rounding).
    """

    #: The eight symmetries of the square as (transpose, flip_h, flip_v) on (B, 3, S, S) tensors.
    VIEWS = ((False, False, False), (False, True, False), (False, False, True), (False, True, True),
             (True, True, False), (True, False, True), (True, False, False), (True, True, True))

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        input_size_px: int = DEFAULT_INPUT_SIZE_PX,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 64,
        test_time_views: int = 1,
        focus_radii: Sequence[float] | None = None,
        source: str = "",
        group_distance: float | None = None,
        channels_last: bool = False,
    ):
        if test_time_views not in (1, 2, 4, 8):
            raise ValueError(f"test_time_views must be 1, 2, 4 or 8, got {test_time_views}")
        if input_size_px < 32:
            raise ValueError(f"input_size_px must be >= 32, got {input_size_px}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        #: Whether the model runs in the channels-last (NHWC) layout: oneDNN's faster CPU
        #: convolutions (8 crops of 64 px: 43.5 instead of 51.3 ms, one thread, session 23;
        #: embeddings within 2e-6). The weights files load this way (:meth:`from_weights`);
        #: a model under training is left as it is.
        self.channels_last = bool(channels_last)
        self.model = model.eval().to(memory_format=torch.channels_last) if self.channels_last else model.eval()
        self.input_size_px = int(input_size_px)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.batch_size = int(batch_size)
        self.test_time_views = int(test_time_views)
        self.focus_radii = None if focus_radii is None else (float(focus_radii[0]), float(focus_radii[1]))
        if self.focus_radii is not None and not 0 <= self.focus_radii[0] < self.focus_radii[1]:
            raise ValueError(f"focus_radii must satisfy 0 <= inner < outer, got {focus_radii}")
        self._focus = None if self.focus_radii is None else focus_mask(self.input_size_px, self.focus_radii)
        self.source = source
        #: Cosine distance that separates kinds for these weights (sidecar
        #: ``group_cosine_distance``, :func:`sorterbot_cloud.planner.choose_n_clusters`); None: unknown.
        self.group_distance = None if group_distance is None else float(group_distance)
        self._mean = torch.tensor(self.mean).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(self.std).view(1, 3, 1, 1) * 255.0

    @classmethod
    def from_weights(cls, path: str | Path, *, source: str = "configured", batch_size: int = 64) -> "Embedder":
        """Build an embedder from a weights file and its sidecar.

        A project file's sidecar gives ``input_size_px``, ``mean``, ``std``,
        ``focus_radii`` (default none), ``test_time_views`` (default 1) and
        ``group_cosine_distance`` (default none); the
        torchvision ImageNet file uses :data:`IMAGENET_INPUT_SIZE_PX` and the ImageNet
        normalisation.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If it is not a ResNet18 ``state_dict``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embedder weights {path} do not exist")
        model = build_resnet18()
        missing, unexpected = model.load_state_dict(load_state_dict(path), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} is not a ResNet18 state_dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
        meta: dict = {}
        if sidecar_path(path).is_file():
            meta = json.loads(sidecar_path(path).read_text())
        if path.name == IMAGENET_RESNET18_FILE:
            size = meta.get("input_size_px", IMAGENET_INPUT_SIZE_PX)
        else:
            size = meta.get("input_size_px", DEFAULT_INPUT_SIZE_PX)
        return cls(
            model,
            input_size_px=size,
            mean=meta.get("mean", IMAGENET_MEAN),
            std=meta.get("std", IMAGENET_STD),
            batch_size=batch_size,
            test_time_views=int(meta.get("test_time_views", 1)),
            focus_radii=meta.get("focus_radii"),
            source=f"{source}:{path}",
            group_distance=meta.get("group_cosine_distance"),
            channels_last=True,
        )

    @classmethod
    def from_settings(cls, settings) -> "Embedder":
        """Build the embedder that ``settings`` asks for (weights order in the module docstring).

        Raises
        ------
        FileNotFoundError
            If a configured weights file is missing, or no weights are found at all.
        """
        choice = resolve_weights(settings.embedder_weights)
        log.info("embedder weights: %s (%s)", choice.path, choice.source)
        return cls.from_weights(choice.path, source=choice.source)

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Letterbox crops to ``S x S`` and stack them.

        Parameters
        ----------
        crops : sequence of ndarray of shape (h_i, w_i, 3), uint8, RGB

        Returns
        -------
        Tensor of shape (N, 3, S, S), uint8

        Raises
        ------
        InvalidImage
            If a crop is not an (h, w, 3) uint8 array.
        """
        return torch.from_numpy(letterbox_batch(crops, self.input_size_px))

    def forward_uint8(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalise a uint8 batch (B, 3, S, S) and return L2-normalised features (B, 512).

        With ``test_time_views > 1`` the features of the views are averaged first.
        """
        x = (batch.float() - self._mean) / self._std
        if self._focus is not None:
            x = x * self._focus
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.test_time_views == 1:
            return torch.nn.functional.normalize(self.model(x), dim=1)
        views = []
        for transpose, flip_h, flip_v in self.VIEWS[: self.test_time_views]:
            v = x.transpose(2, 3) if transpose else x
            dims = [d for d, f in ((3, flip_h), (2, flip_v)) if f]
            views.append(torch.flip(v, dims) if dims else v)
        feats = self.model(torch.cat(views)).view(self.test_time_views, x.shape[0], -1).mean(0)
        return torch.nn.functional.normalize(feats, dim=1)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed item crops.

        Parameters
        ----------
        crops : sequence of ndarray of shape (h_i, w_i, 3), uint8, RGB
            Any sizes; each is letterboxed to the model's input square.

        Returns
        -------
        embeddings : ndarray of shape (N, 512), float32
            L2-normalised (unit Euclidean norm per row); deterministic for a given input.

        Raises
        ------
        BadRequest
            If ``crops`` is not a sequence of arrays.
        InvalidImage
            If a crop is not an (h, w, 3) uint8 array.
        """
        if isinstance(crops, np.ndarray) and crops.ndim == 3:
            raise BadRequest("crops must be a sequence of (h, w, 3) arrays, got a single array")
        crops = list(crops)
        out = np.zeros((len(crops), EMBEDDING_DIM), np.float32)
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                batch = self.preprocess(crops[start : start + self.batch_size])
                out[start : start + len(batch)] = self.forward_uint8(batch).numpy()
        return out


def load_embedder(settings) -> Embedder:
    """Return the embedder ``settings`` asks for (see :meth:`Embedder.from_settings`)."""
    return Embedder.from_settings(settings)
