"""``EvalConfig``: everything an ``openeva eval`` run needs besides the model, typed and checked when built.

    from openeva.eval import EvalConfig, evaluate
    from openeva.evaluators import KNNOptions

    config = EvalConfig(tasks=("zeroshot", "knn"), dataset="data/val", train_dataset="data/train",
                        classnames="imagenet1k", knn=KNNOptions(ks=(10, 20)), output_dir="results")
    records = evaluate("EVA02-B-16", config)

Per-task options are typed sections: the evaluators' own options (:class:`~openeva.evaluators.KNNOptions`,
:class:`~openeva.evaluators.LinearProbeOptions`) and the sections below for the tasks that only ``openeva eval``
runs (fine-tuning, open-vocabulary segmentation, zero-shot video).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from openeva.data.labelled import DATASET_TYPES
from openeva.dense.segment import DenseOptions
from openeva.evaluators.knn import KNNOptions
from openeva.evaluators.linear_probe import LinearProbeOptions
from openeva.runtime import PRECISION_CHOICES


def split_tasks(tasks) -> tuple[str, ...]:
    """``"zeroshot,knn"`` or ``["zeroshot", "knn,linear-probe"]`` -> unique names in order (``-`` read as ``_``);
    whether each is a task is :func:`openeva.eval.runner.parse_tasks`'s check, against the task table."""
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for item in items:
        for t in str(item).split(","):
            t = t.strip().replace("-", "_")
            if t and t not in out:
                out.append(t)
    if not out:
        raise ValueError("no task given (e.g. tasks=('zeroshot',))")
    return tuple(out)


def _names(value):
    """A builtin name / file path stays a string; a list of names becomes a tuple."""
    if value is None or isinstance(value, (str, os.PathLike)):
        return None if value is None else str(value)
    return tuple(str(v) for v in value)


@dataclass(frozen=True)
class FinetuneEvalOptions:
    """``--task finetune``: the recipe (a ``finetune_*`` config name or file, a ``TrainConfig``; None: chosen by
    the backbone's weights) and ``key=value`` overrides of it."""

    config: Any = None
    overrides: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "overrides", tuple(self.overrides))
        bad = [o for o in self.overrides if "=" not in o]
        if bad:
            raise ValueError(f"finetune overrides must be key=value, got {bad}")


@dataclass(frozen=True)
class SegmentationEvalOptions:
    """``--task segmentation``: the mask folder, background threshold and prompts, dense feature path."""

    masks: str | None = None  # default: DATASET/masks beside DATASET/images
    bg_threshold: float | None = None  # background where the top class probability is below this
    background: tuple[str, ...] = ()  # background prompts; pixels they win are background
    method: str | None = None  # dense feature path (DenseOptions.method); None: its default
    refine: str | None = None  # DenseOptions.refine; None: its default

    def __post_init__(self):
        object.__setattr__(self, "background", tuple(b for b in self.background if b and b.strip()))
        if self.bg_threshold is not None and not 0.0 <= self.bg_threshold <= 1.0:
            raise ValueError(f"--bg-threshold must be in [0, 1], got {self.bg_threshold}")
        self.dense_options()  # refuses an unknown method / refine

    def dense_options(self) -> DenseOptions:
        changes = {k: getattr(self, k) for k in ("method", "refine") if getattr(self, k)}
        return dataclasses.replace(DenseOptions(), **changes)


@dataclass(frozen=True)
class VideoEvalOptions:
    """``--task zeroshot_video``: frames sampled uniformly per video."""

    num_frames: int = 8

    def __post_init__(self):
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"--num-frames must be an int >= 1, got {self.num_frames!r}")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on and how; the model is :func:`~openeva.eval.evaluate`'s other argument.

    ``dataset`` is the evaluation set (folder, csv, jsonl, tar, IDX; a segmentation or video folder for those
    tasks), ``train_dataset`` the training split of ``linear_probe`` / ``knn`` / ``finetune``. ``classnames`` and
    ``templates`` take a builtin name (``imagenet1k``, ``cifar10``; ``imagenet1k_short`` for templates), a file
    or a list. ``pretrained`` is a tag or checkpoint of a model given by name (for a built model, its label in
    the cache key and the records); ``model_name`` names the model in the records and picks the tokenizer of a
    built model."""

    tasks: tuple[str, ...]
    dataset: str
    dataset_type: str = "auto"
    dataset_name: str | None = None
    train_dataset: str | None = None
    train_dataset_type: str | None = None
    classnames: str | tuple[str, ...] | None = None
    templates: str | tuple[str, ...] | None = None
    pretrained: str | None = None
    model_name: str | None = None
    batch_size: int = 64
    precision: str = "auto"  # auto: by the hardware (openeva.runtime.resolve_precision); fp32 with int8
    device: str = "auto"  # auto | cpu | cuda | cuda:N (openeva.runtime.resolve_device)
    num_workers: int = 0
    cache_dir: str | None = None  # frozen-feature cache shared across runs
    output_dir: str | None = None  # result JSONs and plots; None: return the records only
    seed: int = 0
    language: str = "en"
    make_plots: bool = True
    progress: bool = True
    verbose: bool = False  # print the results table
    knn: KNNOptions = field(default_factory=KNNOptions)
    linear_probe: LinearProbeOptions = field(default_factory=LinearProbeOptions)
    finetune: FinetuneEvalOptions = field(default_factory=FinetuneEvalOptions)
    segmentation: SegmentationEvalOptions = field(default_factory=SegmentationEvalOptions)
    video: VideoEvalOptions = field(default_factory=VideoEvalOptions)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "tasks", split_tasks(self.tasks))
        for key in ("dataset", "train_dataset", "cache_dir", "output_dir"):
            value = getattr(self, key)
            if value is not None:
                set_(self, key, str(value))
        set_(self, "classnames", _names(self.classnames))
        set_(self, "templates", _names(self.templates))
        if self.dataset_type not in DATASET_TYPES:
            raise ValueError(f"dataset_type must be one of {', '.join(DATASET_TYPES)}, got {self.dataset_type!r}")
        if self.train_dataset_type is not None and self.train_dataset_type not in DATASET_TYPES:
            raise ValueError(f"train_dataset_type must be one of {', '.join(DATASET_TYPES)}, "
                             f"got {self.train_dataset_type!r}")
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")
        for key, low in (("batch_size", 1), ("num_workers", 0), ("seed", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
        for key, kind in (("knn", KNNOptions), ("linear_probe", LinearProbeOptions),
                          ("finetune", FinetuneEvalOptions), ("segmentation", SegmentationEvalOptions),
                          ("video", VideoEvalOptions)):
            if not isinstance(getattr(self, key), kind):
                raise ValueError(f"EvalConfig.{key} must be a {kind.__name__}, got {type(getattr(self, key)).__name__}")

    def replace(self, **changes) -> "EvalConfig":
        return dataclasses.replace(self, **changes)
