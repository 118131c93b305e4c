"""The typed options of the built-in tasks, registered by task name and validated with the run config.

A run config's ``task_options`` (``task_options.KEY=VALUE`` on the command line) is checked against the task's
options dataclass when the :class:`~openeva.train.config.TrainConfig` is built, like every other section:
values are coerced by the field's type, unknown keys get the one did-you-mean message. Custom tasks register
their own class with :func:`register_task_options` (or ``openeva.train.register_task(..., options=Cls)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from openeva.data.masking import BlockMaskGenerator
from openeva.factory import EVA02_HEAD_INIT_SCALE
from openeva.models.mim import TEACHER_PRECISIONS
from openeva.train.fields import section_from_dict

TARGETS = ("clip", "pixel")
EVA02_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"  # RandAugment: 2 ops, magnitude 9 (std 0.5), increasing severity
EVA02_TRAIN_SCALE = (0.08, 1.0)
EVA02_EMA_DECAY = 0.9999


# ------------------------------------------------------------------------------------------------ MIM
@dataclass(frozen=True)
class MIMOptions:
    """MIM settings of a run (``task_options`` of its TrainConfig; ``task_options.KEY=VALUE`` overrides)."""

    teacher: str = "EVA02-B-16"  # a registered CLIP name or an openeva CLIP checkpoint directory
    teacher_pretrained: str | None = None  # checkpoint (any format) or tag; "random": untrained (smoke tests)
    teacher_precision: str = "auto"  # auto | fp32 | bf16: teacher weights and forward; targets are fp32 either way
    target: str = "clip"  # "clip" (EVA-02) | "pixel" (MAE normalised-pixel baseline)
    num_masking_patches: int | None = None  # default: 105/256 of the grid, i.e. EVA-02's 105 on 16x16
    min_num_patches: int = 16  # smallest masking block
    max_num_patches: int | None = None  # largest block (default: num_masking_patches)
    min_aspect: float = 0.3  # block aspect ratio in [min_aspect, 1 / min_aspect]
    hflip: float = 0.5  # horizontal flip probability (the crop is RandomResizedCrop with data.scale)
    norm_pix: bool = True  # pixel target: per-patch normalised pixels (MAE)
    patch_embed_grad_scale: float = 0.1  # EVA-02: the patch embedding learns with a tenth of its gradient

    @classmethod
    def from_dict(cls, d: dict) -> "MIMOptions":
        return parse_task_options(cls, d, "mim")

    def __post_init__(self) -> None:
        def bad(key, expected):
            return ValueError(f"config task_options.{key}={getattr(self, key)!r} is invalid: expected {expected}")

        if not isinstance(self.teacher, str) or not self.teacher:
            raise bad("teacher", "a CLIP model name or checkpoint directory")
        if self.teacher_pretrained is not None and not isinstance(self.teacher_pretrained, str):
            raise bad("teacher_pretrained", "a checkpoint path, a tag or 'random'")
        if self.teacher_precision not in ("auto", *TEACHER_PRECISIONS):
            raise bad("teacher_precision", f"one of auto, {', '.join(TEACHER_PRECISIONS)}")
        if self.target not in TARGETS:
            raise bad("target", f"one of {', '.join(TARGETS)}")
        for key in ("num_masking_patches", "max_num_patches", "min_num_patches"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise bad(key, "a positive int")
        a = self.min_aspect
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 1:
            raise bad("min_aspect", "a number in (0, 1]")
        if isinstance(self.hflip, bool) or not isinstance(self.hflip, (int, float)) or not 0 <= self.hflip <= 1:
            raise bad("hflip", "a probability in [0, 1]")
        if not isinstance(self.norm_pix, bool):
            raise bad("norm_pix", "true or false")
        g = self.patch_embed_grad_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 <= g <= 1:
            raise bad("patch_embed_grad_scale", "a number in [0, 1]")

    def mask_generator(self, grid_size: tuple[int, int]):
        return BlockMaskGenerator(grid_size, num_masking_patches=self.num_masking_patches,
                                  min_num_patches=self.min_num_patches, max_num_patches=self.max_num_patches,
                                  min_aspect=self.min_aspect)


# ------------------------------------------------------------------------------------------- fine-tuning
@dataclass(frozen=True)
class FinetuneOptions:
    """A fine-tuning run's ``task_options`` (model, data, optimizer and schedule are ``TrainConfig`` sections;
    layer decay is ``optim.layer_decay``). Defaults are EVA-02's recipe for B except EMA, off by default."""

    num_classes: int | None = None  # None: the training data's classes
    classnames: str | None = None  # builtin name or file, for datasets whose labels are indices
    synthetic_attribute: str = "shape"  # label of data.train=synthetic shapes: shape | color | shape_color
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    ema_decay: float = 0.0  # EVA-02: 0.9999
    ema_warmup: bool = False
    ema_eval: bool = True
    auto_augment: str | None = EVA02_AUTO_AUGMENT
    hflip: float = 0.5
    color_jitter: float = 0.4
    re_prob: float = 0.0
    patch_embed_grad_scale: float = 0.0
    head_init_scale: float = EVA02_HEAD_INIT_SCALE
    max_eval_batches: int | None = None

    def __post_init__(self):
        check_loss_options(self.label_smoothing, self.mixup, self.cutmix, self.mixup_prob, self.mixup_switch_prob,
                           self.mixup_mode, self.ema_decay)
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 2):
            raise ValueError(f"task_options.num_classes must be an int >= 2, got {self.num_classes!r}")
        if self.synthetic_attribute not in ("shape", "color", "shape_color"):
            raise ValueError(f"task_options.synthetic_attribute must be shape, color or shape_color, "
                             f"got {self.synthetic_attribute!r}")
        for name in ("hflip", "re_prob", "patch_embed_grad_scale"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"task_options.{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.head_init_scale > 0:
            raise ValueError(f"task_options.head_init_scale must be > 0, got {self.head_init_scale}")

    @classmethod
    def from_dict(cls, options: dict) -> "FinetuneOptions":
        return parse_task_options(cls, options, "finetune")


# ------------------------------------------------------------------------------------------ checks
def check_loss_options(label_smoothing=0.1, mixup=0.0, cutmix=0.0, mixup_prob=1.0, mixup_switch_prob=0.5,
                       mixup_mode="batch", ema_decay=0.0) -> None:
    """ValueError naming the first bad loss / mixup / EMA option (shared by the Task and run preflight)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if mixup < 0 or cutmix < 0:
        raise ValueError(f"mixup and cutmix alphas must be >= 0, got {mixup}, {cutmix}")
    for name, p in (("mixup_prob", mixup_prob), ("mixup_switch_prob", mixup_switch_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if mixup_mode not in ("batch", "pair", "elem"):
        raise ValueError(f"mixup_mode must be 'batch', 'pair' or 'elem', got {mixup_mode!r}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0 disables the EMA), got {ema_decay}")


# ------------------------------------------------------------------------------------------- segmentation
@dataclass(frozen=True)
class SegmentationOptions:
    """Semantic segmentation fine-tune settings (``task="segmentation"``, :mod:`openeva.train.segmentation_task`)."""

    classnames: tuple[str, ...] | str | None = None  # names of mask values 1..C (list or file); None: classnames.txt
    out_channels: int = 64  # pyramid width
    decoder_channels: int = 64
    window_size: int | None = None  # ViTDet attention layout: window attention in all blocks but global_blocks
    global_blocks: tuple[int, ...] = ()
    synthetic_label_by: str = "color"  # data.train=synthetic: scenes labelled by "color" or "shape"
    hflip: float = 0.5  # joint image + mask flip probability

    @classmethod
    def from_dict(cls, d: dict) -> "SegmentationOptions":
        return parse_task_options(cls, d, "segmentation")

    def __post_init__(self) -> None:
        if isinstance(self.classnames, list):
            object.__setattr__(self, "classnames", tuple(self.classnames))
        if self.synthetic_label_by not in ("color", "shape"):
            raise ValueError(f"task_options.synthetic_label_by must be 'color' or 'shape', got "
                             f"{self.synthetic_label_by!r}")
        if isinstance(self.hflip, bool) or not isinstance(self.hflip, (int, float)) or not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"task_options.hflip must be in [0, 1], got {self.hflip!r}")
        for k in ("out_channels", "decoder_channels"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"task_options.{k} must be an int >= 1, got {v!r}")
        if self.window_size is not None and (not isinstance(self.window_size, int) or self.window_size < 1):
            raise ValueError(f"task_options.window_size must be an int >= 1 or None, got {self.window_size!r}")


# -------------------------------------------------------------------------------------------- registry
MIM_TASK = "openeva.train.mim_task:build_mim"  # the module path of the "mim" task (older configs name it)
FINETUNE_TASK = "openeva.train.finetune_task:build_finetune"  # likewise for "finetune"
TASK_ALIASES = {MIM_TASK: "mim", FINETUNE_TASK: "finetune"}
_OPTIONS: dict[str, type] = {"mim": MIMOptions, "finetune": FinetuneOptions, "segmentation": SegmentationOptions}


def canonical_task(task: str) -> str:
    """The registered name of a task (``"mim"`` for its module path), else ``task`` itself."""
    return TASK_ALIASES.get(task, task)


def register_task_options(task: str, options_class: type) -> None:
    """Validate ``task_options`` of runs with ``task=task`` against the dataclass ``options_class``."""
    if not dataclasses.is_dataclass(options_class):
        raise ValueError(f"task options of {task!r} must be a dataclass, got {options_class!r}")
    _OPTIONS[task] = options_class


def options_class(task: str) -> type | None:
    """The options dataclass registered for ``task`` (None: a task with free-form options)."""
    return _OPTIONS.get(canonical_task(task))


def parse_task_options(options_class: type, options: dict, task: str):
    """``options`` (a config's ``task_options`` dict) as an ``options_class`` instance, checked key by key."""
    return section_from_dict(options_class, options, "task_options.", label=f"task_options key (task {task!r})")


def task_options_of(cfg):
    """The typed options of a run config (None for a task without registered options)."""
    cls = options_class(cfg.task)
    return None if cls is None else parse_task_options(cls, cfg.task_options, canonical_task(cfg.task))
