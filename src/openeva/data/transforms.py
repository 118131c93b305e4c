"""Image preprocessing for EVA-CLIP and EVA-02: a validated config and the torchvision pipelines built from it.

Evaluation must see exactly the pixels the published weights were evaluated with, so the validation pipeline
reproduces open_clip's ``image_transform(..., is_train=False)`` tensor for tensor (resize, crop, then RGB
conversion, as open_clip orders them). One deliberate difference: for a non-square size in 'shortest' mode
open_clip always resizes bicubic; we honour ``interpolation`` (identical for the default 'bicubic'). Training uses RandomResizedCrop with scale (0.9, 1.0) for EVA-CLIP
(Sun et al., 2023) and (0.2, 1.0) for EVA-02 MIM pretraining (Fang et al., 2023).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

INTERPOLATIONS = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}
RESIZE_MODES = ("shortest", "longest", "squash")
# open_clip's preprocess_cfg carries these too; we only support their default values.
_FIXED_KEYS = {"mode": "RGB", "fill_color": 0}


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def _channel_triple(values: Any, what: str, positive: bool) -> tuple[float, float, float]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,) * 3
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise ValueError(f"{what} must be 3 numbers (one per RGB channel), got {values!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must hold numbers, got {values!r}")
    if positive and not all(v > 0 for v in values):
        raise ValueError(f"{what} must be > 0 in every channel, got {values!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are resized and normalized for a model; saved with checkpoints.

    ``size`` is (H, W) (an int means square); ``resize_mode`` for evaluation is 'shortest' (resize the short
    side, center crop), 'longest' (resize the long side, zero-pad) or 'squash' (resize to size, aspect lost).
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self):
        size = self.size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(f"size must be an int or (H, W), got {self.size!r}")
        size = (_positive_int(size[0], "size[0] (height)"), _positive_int(size[1], "size[1] (width)"))
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", _channel_triple(self.mean, "mean", positive=False))
        object.__setattr__(self, "std", _channel_triple(self.std, "std", positive=True))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "PreprocessConfig":
        """Build from our ``to_dict`` output or an open_clip ``preprocess_cfg`` (its 'mode' and 'fill_color'
        keys are accepted at their defaults, 'RGB' and 0)."""
        if not isinstance(cfg, dict):
            raise ValueError(f"preprocess config must be a dict, got {type(cfg).__name__}")
        fields = {k: v for k, v in cfg.items() if k not in _FIXED_KEYS}
        for key, supported in _FIXED_KEYS.items():
            if key in cfg and cfg[key] != supported:
                raise ValueError(f"preprocess config {key}={cfg[key]!r} is not supported (only {supported!r})")
        known = sorted(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ValueError(f"unknown preprocess config keys {unknown}; known: {known}")
        return cls(**fields)


class ResizeKeepRatio:
    """Resize so the shortest (or longest) side fits ``size`` exactly, keeping the aspect ratio.

    Unlike ``T.Resize(int)`` this fits a non-square target: the scale is the smaller (or larger) of the two
    side ratios, and the other side is rounded, as open_clip and timm compute it.
    """

    def __init__(self, size: tuple[int, int], interpolation: T.InterpolationMode, longest: bool):
        self.size = size
        self.interpolation = interpolation
        self.longest = longest

    def __call__(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        ratios = (height / self.size[0], width / self.size[1])
        ratio = max(ratios) if self.longest else min(ratios)
        new_size = [round(height / ratio), round(width / ratio)]
        return TF.resize(img, new_size, self.interpolation)

    def __repr__(self) -> str:
        mode = self.interpolation.value
        return f"{type(self).__name__}(size={self.size}, interpolation={mode}, longest={self.longest})"


def _to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _resize_and_crop(cfg: PreprocessConfig) -> list[Callable]:
    interpolation = INTERPOLATIONS[cfg.interpolation]
    if cfg.resize_mode == "squash":
        return [T.Resize(cfg.size, interpolation=interpolation)]
    if cfg.resize_mode == "longest":
        # CenterCrop zero-pads a smaller image to size, centered: the letterbox open_clip makes.
        return [ResizeKeepRatio(cfg.size, interpolation, longest=True), T.CenterCrop(cfg.size)]
    height, width = cfg.size
    # A square target uses torchvision's shortest-side resize (long side truncated, not rounded), as open_clip.
    resize = T.Resize(height, interpolation=interpolation) if height == width else ResizeKeepRatio(
        cfg.size, interpolation, longest=False
    )
    return [resize, T.CenterCrop(cfg.size)]


def image_transform(
    cfg: PreprocessConfig,
    is_train: bool,
    scale: tuple[float, float] = (0.9, 1.0),
    hflip: float = 0.0,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalized ``(3, H, W)`` float tensor.

    Validation: resize per ``cfg.resize_mode``, crop, RGB, normalize. Training: RandomResizedCrop with area
    ``scale``, horizontal flip with probability ``hflip``, RGB, normalize (random draws use torch's RNG).
    """
    if not isinstance(cfg, PreprocessConfig):
        raise ValueError(f"cfg must be a PreprocessConfig (see PreprocessConfig.from_dict), got {type(cfg).__name__}")
    finish = [_to_rgb, T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    if not is_train:
        return T.Compose([*_resize_and_crop(cfg), *finish])
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must be (min, max) area fractions with 0 < min <= max <= 1, got {scale!r}")
    if isinstance(hflip, bool) or not isinstance(hflip, (int, float)) or not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip must be a probability in [0, 1], got {hflip!r}")
    steps = [T.RandomResizedCrop(cfg.size, scale=tuple(scale), interpolation=INTERPOLATIONS[cfg.interpolation])]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    return T.Compose([*steps, *finish])
