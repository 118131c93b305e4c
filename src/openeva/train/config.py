"""Run configuration: one frozen dataclass, validated when built, so a bad value fails before any compute.

A config file is a Python file defining ``config = TrainConfig(...)`` (see the ``clip_*`` recipes (``openeva.configs``)); the command
line overrides fields with ``key=value`` (dotted keys reach the nested sections, e.g. ``optim.lr=1e-4``),
each value parsed by the field's type. The resolved config is written to the run directory and into every
checkpoint (nanoGPT / dinov2 style), and ``TrainConfig.from_dict`` rebuilds it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openeva.data.loader import default_num_workers
from openeva.data.mix import MIX_MODES
from openeva.data.sources import split_sources
from openeva.train.evals import EVALS
from openeva.train.fields import field_types, all_keys, parse_value, section_from_dict, unknown_key_message
from openeva.train.options import canonical_task, options_class, parse_task_options

# Keys EVA-CLIP re-initialises when it builds a CLIP from a MIM vision tower and a CLIP text tower.
EVA_CLIP_SKIP_LIST = ("head.weight", "head.bias", "lm_head.weight", "lm_head.bias", "mask_token",
                      "text_projection", "logit_scale")
OPTIMIZERS = ("adamw", "lamb")
# Named (betas, eps) of EVA-CLIP's LAMB. "eva_clip_paper": the paper and the repository's DeepSpeed config (the
# OptimConfig default). "eva_clip_release": what the released training command resolves to, because
# EVA-CLIP/rei/training/params.py keys its defaults on "vit" in the model name and EVA's names lack it.
BETAS_PRESETS = {"eva_clip_paper": ((0.9, 0.98), 1e-6), "eva_clip_release": ((0.9, 0.999), 1e-8)}
SCHEDULERS = ("cosine", "const", "const-cooldown")
from openeva.runtime import PRECISION_CHOICES as PRECISIONS  # auto: openeva.runtime.resolve_precision
STRATEGIES = ("ddp", "fsdp")
BACKENDS = ("auto", "gloo", "nccl")
DEVICES = ("auto", "cpu", "cuda")
LOSSES = ("clip", "siglip")


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"config {key}={value!r} is invalid: expected {expected}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, value, f"one of {', '.join(choices)}")


def _check_positive(key: str, value: Any, allow_zero: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    _check(ok, key, value, "a number >= 0" if allow_zero else "a number > 0")


@dataclass(frozen=True)
class VisionTowerConfig:
    """A timm backbone as the CLIP model's vision tower, e.g. ``model.vision.timm_name=convnext_tiny`` (open_clip's
    ``timm_*`` choices, at the model's embedding dim and image size); every field None keeps the registered tower.
    """

    timm_name: str | None = None  # any timm.list_models() name
    pool: str | None = None  # avg | token | map | max | "" | abs_attn | rot_attn ... (default: avg)
    proj: str | None = None  # linear | mlp | none | "" (the trunk's own head; default: linear)
    proj_bias: bool | None = None
    timm_pretrained: bool | None = None  # timm's ImageNet weights (downloaded by timm)

    def validate(self, p: str = "model.vision") -> None:
        if self.timm_name is None:
            extra = [k for k in ("pool", "proj", "proj_bias", "timm_pretrained") if getattr(self, k) is not None]
            if extra:
                _check(False, f"{p}.{extra[0]}", getattr(self, extra[0]), f"{p}.timm_name set as well")

    def factory_overrides(self) -> dict[str, Any]:
        """The ``create_model`` keywords (``timm_name``, ``timm_pool`` ...) of the fields that are set."""
        names = {"timm_name": "timm_name", "pool": "timm_pool", "proj": "timm_proj", "proj_bias": "timm_proj_bias",
                 "timm_pretrained": "timm_pretrained"}
        return {names[k]: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelConfig:
    """What is trained and where its weights come from."""

    name: str = "EVA02-test"  # a registered model (``openeva models``) or an openeva checkpoint directory
    pretrained: str | None = None  # whole-model weights (path or tag); loaded before the tower inits
    pretrained_image: str | None = None  # vision tower init, e.g. an EVA-02 MIM checkpoint (any format)
    pretrained_text: str | None = None  # text tower init, from a CLIP checkpoint (open_clip / EVA-CLIP / ours)
    skip_list: tuple[str, ...] = EVA_CLIP_SKIP_LIST  # tower keys left as initialised (glob, relative to tower)
    img_size: int | None = None
    patch_dropout: float = 0.0  # FLIP token dropping in the vision tower while training
    drop_path_rate: float | None = None
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the Task
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)  # model.vision.timm_name=... swaps the tower

    def validate(self, p: str = "model") -> None:
        _check(isinstance(self.name, str) and bool(self.name), f"{p}.name", self.name, "a model name")
        _check(0.0 <= self.patch_dropout < 1.0, f"{p}.patch_dropout", self.patch_dropout, "a rate in [0, 1)")
        if self.drop_path_rate is not None:
            _check(0.0 <= self.drop_path_rate < 1.0, f"{p}.drop_path_rate", self.drop_path_rate, "a rate in [0, 1)")
        _check_positive(f"{p}.img_size", self.img_size, allow_none=True)
        for key in ("lock_image_unlocked_groups", "lock_text_unlocked_layers"):
            value = getattr(self, key)
            _check(isinstance(value, int) and value >= 0, f"{p}.{key}", value, "an int >= 0")
        self.vision.validate(f"{p}.vision")


@dataclass(frozen=True)
class DataConfig:
    """Training pairs, batch size and the validation sets watched during training."""

    # "synthetic", or sources joined by ';' (openeva.data.sources: paths, URLs, pipe:, braces): caption index,
    # image-text folder, tar shards
    train: str = "synthetic"
    train_weights: tuple[float, ...] | None = None  # mixing weight per ';' source (default: their sizes)
    mix: str = "sample"  # several sources: "sample" (per-sample draws) or "batch" (whole batches, EVA-CLIP)
    resampled: bool = False  # tar shards drawn with replacement per consumer (open_clip --dataset-resampled)
    train_num_samples: int | None = None  # samples per epoch (required for tar shards); None: each source once
    synthetic_num_samples: int = 2048  # size of the generated set of data.train=synthetic (and nothing else)
    image_key: str = "filepath"  # caption index columns (open_clip's defaults)
    caption_key: str = "title"
    batch_size: int = 32  # per process and micro-step: global batch = batch_size * world_size * accum_steps
    num_workers: int = field(default_factory=default_num_workers)  # DataLoader workers: one per CPU but one
    scale: tuple[float, float] = (0.9, 1.0)  # RandomResizedCrop area range (EVA-CLIP)
    val: str | None = "synthetic"  # image-text pairs for validation loss and retrieval, or None
    val_num_samples: int = 256
    zeroshot: str | None = "shapes"  # "shapes" (synthetic held-out pairs) or a labelled folder / csv, or None
    zeroshot_classnames: str | None = None  # file or builtin name (needed for a folder / csv zero-shot set)
    zeroshot_templates: str | None = None
    zeroshot_num_samples: int = 250

    def sources(self) -> list[str]:
        return split_sources(self.train)

    def validate(self, p: str = "data") -> None:
        _check(isinstance(self.train, str) and bool(self.sources()), f"{p}.train", self.train, "a data source")
        if self.train_weights is not None:
            _check(len(self.train_weights) == len(self.sources()) and all(w >= 0 for w in self.train_weights)
                   and sum(self.train_weights) > 0, f"{p}.train_weights", self.train_weights,
                   f"{len(self.sources())} weights >= 0 (one per ';' source), not all zero")
        for key in ("batch_size", "val_num_samples", "zeroshot_num_samples", "synthetic_num_samples"):
            value = getattr(self, key)
            _check(isinstance(value, int) and value > 0, f"{p}.{key}", value, "an int > 0")
        _check(isinstance(self.num_workers, int) and self.num_workers >= 0, f"{p}.num_workers", self.num_workers,
               "an int >= 0")
        _check(self.mix in MIX_MODES, f"{p}.mix", self.mix, f"one of {', '.join(MIX_MODES)}")
        _check(isinstance(self.resampled, bool), f"{p}.resampled", self.resampled, "true or false")
        if self.train_num_samples is not None:
            _check(isinstance(self.train_num_samples, int) and self.train_num_samples > 0,
                   f"{p}.train_num_samples", self.train_num_samples, "an int > 0")
        lo, hi = self.scale
        _check(0 < lo <= hi <= 1, f"{p}.scale", self.scale, "(min, max) with 0 < min <= max <= 1")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, per-tower learning rates and layer-wise lr decay (EVA-CLIP), clipping, accumulation."""

    optimizer: str = "adamw"  # adamw | lamb (DeepSpeed's formula, as EVA-CLIP: openeva.train.optim.Lamb)
    lr: float = 5e-4  # base lr: parameters outside the towers (logit scale) and towers without their own lr
    visual_lr: float | None = None
    text_lr: float | None = None
    visual_layer_decay: float = 1.0
    text_layer_decay: float = 1.0
    layer_decay: float = 1.0  # for single-model tasks (MIM, fine-tuning) that do not set their own
    weight_decay: float = 0.05
    visual_weight_decay: float | None = None
    text_weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    betas_preset: str | None = None  # a BETAS_PRESETS name; sets betas and eps (e.g. eva_clip_release)
    grad_clip: float | None = 5.0  # max global grad norm, the only clip (the optimizers do not clip); None disables
    accum_steps: int = 1

    def __post_init__(self):
        """A ``betas_preset`` sets ``betas`` and ``eps``; either left at its default or equal to the preset's is
        fine, another value contradicts the preset and is refused."""
        if self.betas_preset not in BETAS_PRESETS:
            return  # None, or an unknown name that validate() reports
        betas, eps = BETAS_PRESETS[self.betas_preset]
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in ("betas", "eps")}
        for key, value in (("betas", betas), ("eps", eps)):
            given = tuple(getattr(self, key)) if key == "betas" else getattr(self, key)
            if given not in (defaults[key], value):
                raise ValueError(f"config optim.betas_preset={self.betas_preset!r} sets optim.{key}={value!r}, "
                                 f"but optim.{key}={given!r} was given: drop one of the two")
            object.__setattr__(self, key, value)

    def validate(self, p: str = "optim") -> None:
        _check_choice(f"{p}.optimizer", self.optimizer, OPTIMIZERS)
        _check_positive(f"{p}.lr", self.lr)
        for key in ("visual_lr", "text_lr"):
            _check_positive(f"{p}.{key}", getattr(self, key), allow_zero=True, allow_none=True)
        for key in ("visual_layer_decay", "text_layer_decay", "layer_decay"):
            value = getattr(self, key)
            _check(isinstance(value, (int, float)) and 0 < value <= 1, f"{p}.{key}", value, "a factor in (0, 1]")
        for key in ("weight_decay", "visual_weight_decay", "text_weight_decay"):
            _check_positive(f"{p}.{key}", getattr(self, key), allow_zero=True, allow_none=key != "weight_decay")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{p}.betas", self.betas,
               "(beta1, beta2) in [0, 1)")
        _check_positive(f"{p}.eps", self.eps)
        _check_positive(f"{p}.grad_clip", self.grad_clip, allow_none=True)
        if self.betas_preset is not None:
            _check_choice(f"{p}.betas_preset", self.betas_preset, tuple(BETAS_PRESETS))
        _check(isinstance(self.accum_steps, int) and self.accum_steps >= 1, f"{p}.accum_steps", self.accum_steps,
               "an int >= 1")


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule over optimizer steps: linear warmup, then cosine / constant / cooldown."""

    scheduler: str = "cosine"
    warmup_steps: int = 2000
    total_steps: int | None = None  # optimizer steps; or derive them from epochs
    epochs: int | None = None
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of each group's lr
    cooldown_steps: int = 0  # const-cooldown: linear decay to the floor over the last steps

    def validate(self, p: str = "schedule") -> None:
        _check_choice(f"{p}.scheduler", self.scheduler, SCHEDULERS)
        _check(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, f"{p}.warmup_steps",
               self.warmup_steps, "an int >= 0")
        _check((self.total_steps is None) != (self.epochs is None), f"{p}.total_steps", self.total_steps,
               f"exactly one of {p}.total_steps and {p}.epochs (got epochs={self.epochs!r})")
        for key in ("total_steps", "epochs"):
            value = getattr(self, key)
            if value is not None:
                _check(isinstance(value, int) and value > 0, f"{p}.{key}", value, "an int > 0")
        if self.total_steps is not None:
            _check(self.warmup_steps <= self.total_steps, f"{p}.warmup_steps", self.warmup_steps,
                   f"at most {p}.total_steps={self.total_steps}")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"{p}.min_lr_ratio", self.min_lr_ratio, "a fraction in [0, 1]")
        _check(isinstance(self.cooldown_steps, int) and self.cooldown_steps >= 0, f"{p}.cooldown_steps",
               self.cooldown_steps, "an int >= 0")
        if self.scheduler == "const-cooldown":
            _check(self.cooldown_steps > 0, f"{p}.cooldown_steps", self.cooldown_steps, "> 0 for const-cooldown")


@dataclass(frozen=True)
class LossConfig:
    """The contrastive objective and how it spans processes (open_clip's semantics)."""

    kind: str = "clip"  # clip (softmax) | siglip (sigmoid)
    local_loss: bool = True  # EVA-CLIP: local rows against gathered columns ...
    gather_with_grad: bool = True  # ... with gradients through the gather
    tiled: bool = False  # Inf-CL tiled softmax loss (memory linear in the batch)
    max_logit_scale: float = 100.0  # logit scale clamped to ln(this) after every step (CLIP)

    def validate(self, p: str = "loss") -> None:
        _check_choice(f"{p}.kind", self.kind, LOSSES)
        _check_positive(f"{p}.max_logit_scale", self.max_logit_scale)


@dataclass(frozen=True)
class DistConfig:
    """Process layout: DDP everywhere, FSDP2 (``fully_shard``) for large models."""

    strategy: str = "ddp"
    backend: str = "auto"  # auto: nccl on GPU, gloo on CPU
    find_unused_parameters: bool = False
    static_graph: bool = False
    # Seconds a collective may wait for the slowest rank before the run fails (NCCL's default is 10 minutes; a
    # checkpoint of a g/E-size model or a first evaluation on a busy file system can take longer).
    timeout_s: float = 1800.0
    # FSDP: ranks other than 0 build the model on the meta device (no memory, no init, no weight files read); after
    # sharding, each rank allocates its shards and receives them from rank 0 tensor by tensor
    meta_init: bool = True

    def validate(self, p: str = "dist") -> None:
        _check(isinstance(self.meta_init, bool), f"{p}.meta_init", self.meta_init, "true or false")
        _check_choice(f"{p}.strategy", self.strategy, STRATEGIES)
        _check_choice(f"{p}.backend", self.backend, BACKENDS)
        _check_positive(f"{p}.timeout_s", self.timeout_s)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. Top-level fields are the run itself; sections are nested dataclasses."""

    task: str = "clip"  # a registered task ("clip", "mim", "finetune") or "package.module:build_function"
    output_dir: str = "runs"
    name: str | None = None  # run directory = output_dir/name (the CLI defaults it to the config file's stem)
    seed: int = 0
    resume: str | None = None  # "latest" or a checkpoint directory
    precision: str = "auto"  # auto (bf16 where native, else fp32) | fp32 | bf16 (autocast) | fp16 (+ grad scaler)
    device: str = "auto"  # auto: cuda when available, else cpu
    max_steps_this_run: int | None = None  # stop (after checkpointing) once this many steps ran in this process
    save_every: int = 1000  # optimizer steps between checkpoints (one is always written at the end)
    keep_last: int = 3  # checkpoints kept (older ones deleted)
    log_every: int = 10
    eval_every: int = 0  # steps between validations; 0: only at the end
    # restores from the newest checkpoint after a non-finite loss / grad norm, skipping the data window that gave it
    # (openeva.train.nan_guard); one more non-finite step stops the run. 0: stop at the first one
    nan_max_retries: int = 3
    evals: tuple[str, ...] | None = None  # validation evaluators (openeva.train.evals.EVALS); None: the task's own
    progress: bool = True  # progress bar on rank 0
    tensorboard: bool = True
    plot: bool = True
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's options (typed for registered tasks)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self):
        for name, kind in (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig),
                           ("schedule", ScheduleConfig), ("loss", LossConfig), ("dist", DistConfig)):
            _check(isinstance(getattr(self, name), kind), name, getattr(self, name), f"a {kind.__name__}")
            getattr(self, name).validate(name)
        _check(isinstance(self.task, str) and bool(self.task), "task", self.task, "a task name")
        _check(isinstance(self.output_dir, str) and bool(self.output_dir), "output_dir", self.output_dir, "a path")
        if self.name is not None:
            _check(isinstance(self.name, str) and bool(self.name) and "/" not in self.name and self.name not in
                   (".", ".."), "name", self.name, "a directory name without '/'")
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0, "seed", self.seed,
               "an int >= 0")
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("device", self.device, DEVICES)
        for key in ("save_every", "keep_last", "log_every"):
            value = getattr(self, key)
            _check(isinstance(value, int) and value >= 1, key, value, "an int >= 1")
        _check(isinstance(self.nan_max_retries, int) and not isinstance(self.nan_max_retries, bool)
               and self.nan_max_retries >= 0, "nan_max_retries", self.nan_max_retries, "an int >= 0")
        _check(isinstance(self.eval_every, int) and self.eval_every >= 0, "eval_every", self.eval_every,
               "an int >= 0 (0: evaluate at the end only)")
        if self.evals is not None:
            object.__setattr__(self, "evals", tuple(self.evals))
            _check(all(e in EVALS for e in self.evals), "evals", self.evals, f"names among {', '.join(EVALS)}")
        if self.max_steps_this_run is not None:
            _check(isinstance(self.max_steps_this_run, int) and self.max_steps_this_run >= 1, "max_steps_this_run",
                   self.max_steps_this_run, "an int >= 1")
        _check(isinstance(self.task_options, dict), "task_options", self.task_options, "a dict")
        options = options_class(self.task)
        if options is not None:  # a built-in (or registered) task: its typed options, checked here
            parse_task_options(options, self.task_options, canonical_task(self.task))

    # ------------------------------------------------------------------------------------ (de)serialising
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (JSON lists become tuples); unknown keys are an error."""
        return section_from_dict(cls, d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> "TrainConfig":
        return apply_overrides(self, overrides)


def _task_option_type(task: str, name: str):
    """The declared type of ``task_options.<name>`` for ``task`` (Any for free-form options or an unknown key,
    which the options dataclass then rejects with its own message), so ``ema_warmup=true`` parses as a bool."""
    cls = options_class(task)
    return field_types(cls).get(name, Any) if cls is not None else Any


def apply_overrides(cfg: TrainConfig, overrides) -> TrainConfig:
    """``["optim.lr=1e-4", "name=run2"]`` applied to ``cfg`` (validated again). ``task_options.k=v`` sets one
    custom option."""
    known = list(all_keys(TrainConfig))
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.startswith("task_options."):
            options = dict(changes.get("task_options", cfg.task_options))
            name = key.split(".", 1)[1]
            options[name] = parse_value(text, _task_option_type(cfg.task, name), key)
            changes["task_options"] = options
            continue
        if key not in known:
            raise ValueError(unknown_key_message(key, known))
        changes[key] = text
    data = cfg.to_dict()
    for key, text in changes.items():
        if key == "task_options":
            data["task_options"] = text
            continue
        *path, leaf = key.split(".")
        owner_cls, section = TrainConfig, data
        for part in path:
            owner_cls, section = field_types(owner_cls)[part], section[part]
        section[leaf] = parse_value(text, field_types(owner_cls)[leaf], key)
    return TrainConfig.from_dict(data)


def load_config(path: str | Path, overrides=()) -> TrainConfig:
    """Runs the Python config file and returns its ``config`` (a :class:`TrainConfig`) with overrides applied.

    ``path`` is a file (``.py`` or a run's ``config.json``); :func:`openeva.configs.load_config` also takes the
    name of a shipped recipe (``clip_tiny``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (a shipped recipe by name is loaded by "
                                "openeva.configs.load_config)")
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
        cfg = TrainConfig.from_dict(raw.get("train_config", raw))
        return apply_overrides(cfg, overrides)
    spec = importlib.util.spec_from_file_location(f"openeva_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config file {path}: {e}") from e
    cfg = getattr(module, "config", None)
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"config file {path} must define `config = TrainConfig(...)`, "
                         f"found {type(cfg).__name__ if cfg is not None else 'nothing'}")
    return apply_overrides(cfg, overrides)
