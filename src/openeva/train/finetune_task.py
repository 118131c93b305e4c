"""Image-classification fine-tuning of EVA-02 backbones (EVA-02 paper, Sec. 4.1; the official
``run_class_finetuning.py`` recipe).

The recipe: mean-pooled patch tokens -> ``fc_norm`` -> a new linear head initialised small (trunc-normal
0.02 x 0.001), the patch embedding's gradient detached, drop path, AdamW with layer-wise lr decay, cosine
schedule with warmup, cross-entropy with label smoothing (or timm's Mixup/CutMix with soft-target
cross-entropy), RandAugment ``rand-m9-mstd0.5-inc1`` on RandomResizedCrop(scale 0.08-1) crops, and an EMA of
the weights (decay 0.9999) used for evaluation.

This module holds the objective (:class:`FinetuneTask`), the weight EMA and the transforms; the classifier
is built by :func:`openeva.factory.build_classifier`; the optimizer, schedule, precision and checkpoints belong to the
one training engine.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

import torchvision.transforms as T
from timm.data import Mixup, create_transform

from openeva.data.classnames import load_classnames
from openeva.data.image_lists import LabelledImages
from openeva.data.labelled import align_classes, load_classification_dataset
from openeva.data.loader import collate_skip_none
from openeva.data.synthetic import ShapesClassification
from openeva.data.transforms import PreprocessConfig, image_transform
from openeva.factory import EVA02_HEAD_INIT_SCALE, build_classifier, preprocess_cfg  # noqa: F401 (re-exported)
from openeva.evaluators import Accuracy, AccuracyOptions
from openeva.train.augment_bounds import bound_posterize
from openeva.train.data import ResumableLoader
from openeva.train.distributed import builds_on_meta
from openeva.train.evals import rank_share, select_evals
from openeva.train.options import (
    EVA02_AUTO_AUGMENT, EVA02_EMA_DECAY, EVA02_TRAIN_SCALE, FinetuneOptions, check_loss_options,
)
from openeva.train.preflight import check_weights, resolve_model
from openeva.train.task import ParamGroupSpec, Task



# ------------------------------------------------------------------------------------------- transforms
def _rgb(img):
    """Module-level (picklable for DataLoader workers) RGB conversion; RandAugment expects RGB images."""
    return img if getattr(img, "mode", "RGB") == "RGB" else img.convert("RGB")


def finetune_transforms(
    preprocess: dict,
    auto_augment: str | None = EVA02_AUTO_AUGMENT,
    scale: tuple[float, float] = EVA02_TRAIN_SCALE,
    hflip: float = 0.5,
    color_jitter: float = 0.4,
    re_prob: float = 0.0,
) -> tuple[Callable, Callable]:
    """(train, val) transforms for fine-tuning from a model's preprocessing dict (size, mean, std, ...).

    Train: timm's ImageNet pipeline (RandomResizedCrop ``scale``, flip, RandAugment ``auto_augment`` -- timm
    disables colour jitter when RandAugment is on --, normalise, random erasing ``re_prob``). Val: the model's
    evaluation transform (resize + center crop, crop_pct 1.0 as EVA-02 evaluates).
    """
    cfg = PreprocessConfig.from_dict(dict(preprocess))
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must be (min, max) area fractions with 0 < min <= max <= 1, got {scale!r}")
    for name, p in (("hflip", hflip), ("re_prob", re_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    try:
        train = create_transform(
            input_size=cfg.size, is_training=True, scale=tuple(scale), hflip=hflip, color_jitter=color_jitter,
            auto_augment=auto_augment or None, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std,
            re_prob=re_prob,
        )
    except (AssertionError, KeyError, ValueError) as e:  # timm asserts on a malformed policy string
        raise ValueError(f"auto_augment {auto_augment!r} is not a timm policy string such as "
                         f"{EVA02_AUTO_AUGMENT!r} ({type(e).__name__}: {e})") from e
    train = bound_posterize(train)  # posterize at magnitude 10 would ask Pillow for 0 bits
    return T.Compose([_rgb, *train.transforms]), image_transform(cfg, is_train=False)


# -------------------------------------------------------------------------------------------------- EMA
class ModelEMA(nn.Module):
    """Exponential moving average of a model's weights: ``ema = decay * ema + (1 - decay) * weights``.

    A frozen copy living inside the Task, so it moves with ``.to()``, is saved in the Task's state dict and
    restored on resume. ``warmup`` ramps the decay as ``min(decay, (1 + n) / (10 + n))`` so short runs are not
    dominated by the initial weights (EVA-02's recipe uses a constant 0.9999 over ~37k steps). Integer
    buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = EVA02_EMA_DECAY, warmup: bool = False):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> torch.Tensor:
        """The decay of the next update, a 0-dim fp64 tensor on the copy's device (no host sync to compute)."""
        n = self.num_updates.double()
        decay = torch.full_like(n, self.decay)
        return torch.minimum(decay, (1.0 + n) / (10.0 + n)) if self.warmup else decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One fused (foreach) update of every floating tensor; integer buffers copied. A sharded (FSDP) model's
        tensors are gathered whole, as the copy is a replica."""
        decay = self.current_decay()
        ema_state, state = self.module.state_dict(), model.state_dict()
        if ema_state.keys() != state.keys():
            raise ValueError("the EMA copy and the model have different state-dict keys")
        ema_f, new_f = [], []
        for key, ema_v in ema_state.items():
            v = state[key]
            v = (v.full_tensor() if hasattr(v, "full_tensor") else v).to(device=ema_v.device, dtype=ema_v.dtype)
            if ema_v.is_floating_point():
                ema_f.append(ema_v)
                new_f.append(v)
            else:
                ema_v.copy_(v)
        if ema_f:  # ema = decay * ema + (1 - decay) * v
            torch._foreach_mul_(ema_f, decay)
            torch._foreach_add_(ema_f, torch._foreach_mul(new_f, 1.0 - decay))
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> "ModelEMA":
        """The copy stays in eval mode (no dropout / drop path) whatever the Task's mode."""
        super().train(mode)
        self.module.eval()
        return self


# ----------------------------------------------------------------------------------------- evaluation
def _images_labels(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if batch is None:
        raise ValueError("empty batch (every sample failed to load)")
    if isinstance(batch, dict):
        return batch["image"], batch["label"]
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(f"a classification batch is (images, labels), got {type(batch).__name__}")
    return batch[0], batch[1]


def evaluate_classifier(model: nn.Module, loader: Iterable, device=None, max_batches: int | None = None,
                        group=None) -> dict:
    """Top-1 / top-5 (top-min(5, C)) accuracy and mean cross-entropy of ``model`` over ``loader``: the
    :class:`~openeva.evaluators.Accuracy` evaluator, each rank of ``group`` scoring its share
    (:func:`~openeva.train.evals.rank_share`: a loader's dataset split into blocks, other batches dealt round-robin;
    the first ``max_batches`` batches' samples under any number of ranks), the counts summed.

    Batches are ``(images, labels)`` (None batches, where every image failed to decode, are skipped).
    """
    data, batching = rank_share(loader, group, max_batches)
    return Accuracy(AccuracyOptions(), batching).run(model, data, device=device, group=group)


# ---------------------------------------------------------------------------------------------- task
def _valid_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B,) ``values`` over the valid rows, without reading the count on the host."""
    if valid is None:
        return values.mean()
    return torch.where(valid, values, 0).sum() / valid.sum().clamp(min=1)


class FinetuneTask(Task):
    """Supervised classification of a backbone with a ``num_classes`` head (``forward(images) -> logits``).

    ``batch`` = ``(images (B, C, H, W), labels (B,))``. Loss: cross-entropy with ``label_smoothing``; with
    ``mixup`` or ``cutmix`` alpha > 0, timm's ``Mixup`` mixes the batch (an odd last sample is dropped, as
    batch mixing pairs samples) and the loss is soft-target cross-entropy on the smoothed mixed targets.
    ``layer_decay`` < 1 scales each layer's lr by ``layer_decay ** (num_layers - 1 - layer_id)`` (the engine
    builds the groups from the backbone's ``layer_id``). ``ema_decay`` > 0 keeps a :class:`ModelEMA`, updated
    after every optimizer step; :meth:`evaluate` then reports the EMA weights as ``acc1``/``acc5``/``loss``
    (and the raw weights as ``raw_*``) when ``ema_eval``.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        *,
        label_smoothing: float = 0.1,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_mode: str = "batch",
        layer_decay: float = 1.0,
        ema_decay: float = 0.0,
        ema_warmup: bool = False,
        ema_eval: bool = True,
        val_loader: Iterable | None = None,
        max_eval_batches: int | None = None,
    ):
        super().__init__()
        head_out = _head_out_features(model)
        num_classes = head_out if num_classes is None else num_classes
        if head_out != num_classes:
            raise ValueError(f"the model's head has {head_out} outputs but num_classes={num_classes}; "
                             "build it with num_classes (openeva.create_model(..., num_classes=K))")
        if num_classes < 2:
            raise ValueError(f"classification needs at least 2 classes, got num_classes={num_classes}")
        check_loss_options(label_smoothing, mixup, cutmix, mixup_prob, mixup_switch_prob, mixup_mode, ema_decay)
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if layer_decay < 1.0 and not (hasattr(model, "num_layers") and hasattr(model, "layer_id")):
            raise ValueError(f"layer_decay < 1 needs a model with num_layers and layer_id(); "
                             f"{type(model).__name__} has none")
        cfg = getattr(model, "cfg", None)
        if getattr(cfg, "patch_embed_grad_scale", 1.0) == 0.0:
            # A detached patch embedding never gets a gradient: freeze it so DDP and the optimizer skip it.
            model.patch_embed.requires_grad_(False)
        self.model = model
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.layer_decay = float(layer_decay)
        self.ema_eval = bool(ema_eval)
        self.val_loader = val_loader
        self.max_eval_batches = max_eval_batches
        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            self.mixup_fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob,
                                  switch_prob=mixup_switch_prob, mode=mixup_mode,
                                  label_smoothing=label_smoothing, num_classes=num_classes)
        self.ema = ModelEMA(model, ema_decay, warmup=ema_warmup) if ema_decay > 0 else None

    # ------------------------------------------------------------------------------------ contract
    def forward(self, batch, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """``valid`` (B,) bool: the rows that are samples of a padded fixed-shape batch (None: all); the loss and
        accuracy average over those rows (a padding row may still be a mixing partner: it is a real image)."""
        images, labels = _images_labels(batch)
        labels = labels.long()
        if self.training and self.mixup_fn is not None and len(labels) >= 2:
            if len(labels) % 2:  # batch mixing pairs sample i with B-1-i: drop one to make B even
                images, labels = images[:-1], labels[:-1]
                valid = None if valid is None else valid[:-1]
            images, targets = self.mixup_fn(images, labels)  # targets (B, C), smoothed and mixed
            logits = self.model(images)  # (B, C)
            loss = _valid_mean(torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1), valid)
            return loss, {"loss": loss.detach()}
        logits = self.model(images)  # (B, C)
        per_sample = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing, reduction="none")
        loss = _valid_mean(per_sample, valid)
        acc1 = _valid_mean((logits.detach().argmax(dim=1) == labels).float(), valid)
        return loss, {"loss": loss.detach(), "acc1": acc1}

    def param_group_specs(self) -> list[ParamGroupSpec]:
        return [ParamGroupSpec(module=self.model, prefix="model", layer_decay=self.layer_decay)]

    def on_step_end(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    @property
    def eval_model(self) -> nn.Module:
        """The weights a run reports and exports: the EMA copy when enabled (and ``ema_eval``), else the model."""
        return self.ema.module if self.ema is not None and self.ema_eval else self.model

    def export_model(self) -> nn.Module:
        """What the engine saves as the run's model (``RUN/final``, checkpoints): the EMA weights when they are
        what the run reports. None (nothing exported) for a model without a registry spec."""
        return self.eval_model if getattr(self.eval_model, "spec", None) is not None else None

    def evaluate(self, step: int, group=None) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        metrics = evaluate_classifier(self.eval_model, self.val_loader, max_batches=self.max_eval_batches, group=group)
        if self.eval_model is not self.model:
            raw = evaluate_classifier(self.model, self.val_loader, max_batches=self.max_eval_batches, group=group)
            metrics.update({f"raw_{k}": v for k, v in raw.items()})
        return metrics


def _head_out_features(model: nn.Module) -> int:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head.out_features
    if isinstance(getattr(model, "num_classes", None), int) and model.num_classes > 0:
        return model.num_classes
    raise ValueError(f"{type(model).__name__} has no classification head; build it with num_classes")


def layer_lr_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """Parameter name -> lr multiplier ``layer_decay ** (num_layers - 1 - layer_id(name))`` (for inspection;
    the engine computes the same from :meth:`FinetuneTask.param_group_specs`)."""
    top = model.num_layers - 1
    return {n: math.pow(layer_decay, top - model.layer_id(n)) for n, _ in model.named_parameters()}


# ------------------------------------------------------------------------------- runs on the engine
def load_labelled(path: str, classnames=None, split: str | None = None, what: str = "data.train"):
    """Index a labelled dataset (folder / csv / jsonl / wds / idx) and check it can train a classifier."""
    names = load_classnames(classnames) if isinstance(classnames, str) else classnames
    try:
        data = load_classification_dataset(path, "auto", names, split=split)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{what}: {e}") from None
    present = len(set(data.labels))
    if data.num_classes < 2 or present < 2:
        raise ValueError(f"{what}: {path} has {present} class(es) with images; classification needs at least 2")
    return data


def preflight_finetune(cfg) -> None:
    """Checks that need no model or compute: options, model name, weight file, datasets (indexed, >= 2 classes)."""
    options = FinetuneOptions.from_dict(cfg.task_options)
    select_evals(cfg, ("accuracy",))  # fine-tuning validates with its own head's accuracy
    resolve_model("model.name", cfg.model.name)
    m = cfg.model
    check_weights("model.pretrained", m.pretrained)
    unused = [k for k in ("pretrained_image", "pretrained_text", "lock_image", "lock_text", "patch_dropout")
              if getattr(m, k)]
    if unused:
        raise ValueError(f"model.{unused[0]} is a CLIP-training option that fine-tuning does not use")
    sources = cfg.data.sources()
    if len(sources) != 1:
        raise ValueError(f"data.train: fine-tuning takes one labelled dataset, got {len(sources)} sources")
    if sources[0] != "synthetic":
        train = load_labelled(sources[0], options.classnames, "train")
        if options.num_classes is not None and options.num_classes != train.num_classes:
            raise ValueError(f"task_options.num_classes={options.num_classes} but data.train has "
                             f"{train.num_classes} classes")
        if cfg.data.val == "synthetic":
            raise ValueError("data.val=synthetic goes with data.train=synthetic; set data.val to a labelled "
                             "dataset or None")
        if cfg.data.val is not None:
            align_classes(load_labelled(cfg.data.val, options.classnames, "test", "data.val"), train.classnames,
                          "data.val")
    elif cfg.data.val not in (None, "synthetic"):
        raise ValueError("data.train=synthetic is validated on data.val=synthetic (or None)")


def build_finetune(cfg, world, model=None, train_data=None, val_data=None):
    """(FinetuneTask, ResumableLoader) for a ``TrainConfig`` (``task="finetune"``) on this process.

    ``model`` (a built backbone / CLIP model) replaces ``model.name``; ``train_data`` / ``val_data`` (indexed
    ``ClassificationData``) replace ``data.train`` / ``data.val``, as ``openeva eval --task finetune`` does.
    """
    options = FinetuneOptions.from_dict(cfg.task_options)
    d, m = cfg.data, cfg.model
    synthetic = train_data is None and d.sources() == ["synthetic"]
    if not synthetic and train_data is None:
        train_data = load_labelled(d.sources()[0], options.classnames, "train")
    if not synthetic and val_data is None and d.val not in (None, "synthetic"):
        val_data = load_labelled(d.val, options.classnames, "test", "data.val")
    if synthetic:
        num_classes = len(ShapesClassification(1, options.synthetic_attribute).classes)
    else:
        num_classes = train_data.num_classes
        if val_data is not None:
            val_data = align_classes(val_data, train_data.classnames, "the validation data")
    if options.num_classes is not None and options.num_classes != num_classes:
        raise ValueError(f"task_options.num_classes={options.num_classes} but the training data has {num_classes}")

    name = model if model is not None else m.name
    # shapes only on an FSDP rank other than 0: rank 0 sends the weights (pretrained ones included) at wrap time
    meta = model is None and builds_on_meta(world, cfg.dist.strategy, cfg.dist.meta_init)
    pretrained = None if model is not None or meta else m.pretrained
    with torch.device("meta") if meta else contextlib.nullcontext():
        classifier = build_classifier(name, num_classes, pretrained=pretrained, img_size=m.img_size,
                                      drop_path_rate=m.drop_path_rate,
                                      patch_embed_grad_scale=options.patch_embed_grad_scale,
                                      head_init_scale=options.head_init_scale)
    if m.grad_checkpointing:
        classifier.set_grad_checkpointing(True)
    pre = preprocess_cfg(classifier) if getattr(classifier, "spec", None) is not None else {
        "size": classifier.cfg.img_size}
    train_tf, val_tf = finetune_transforms(pre, options.auto_augment, tuple(d.scale), options.hflip,
                                           options.color_jitter, options.re_prob)
    size = int(classifier.cfg.img_size[0])
    if synthetic:
        train = ShapesClassification(d.synthetic_num_samples, options.synthetic_attribute, "all", size, cfg.seed,
                                     train_tf)
        val = None if d.val is None else ShapesClassification(d.val_num_samples, options.synthetic_attribute, "all",
                                                               size, cfg.seed + 1_000_003, val_tf)
    else:
        train = LabelledImages(train_data.images, train_tf, train_data.labels)
        val = None if val_data is None else LabelledImages(val_data.images, val_tf, val_data.labels)
    loader = ResumableLoader(train, d.batch_size, rank=world.rank, world_size=world.world_size, seed=cfg.seed,
                             num_workers=d.num_workers, pin_memory=world.device.type == "cuda",
                             samples_per_epoch=d.train_num_samples)
    val_loader = None
    if val is not None and "accuracy" in select_evals(cfg, ("accuracy",)):  # on every rank: each scores its share
        val_loader = torch.utils.data.DataLoader(val, batch_size=min(2 * d.batch_size, 256), shuffle=False,
                                                 num_workers=d.num_workers, collate_fn=collate_skip_none)
    task = FinetuneTask(classifier, num_classes, label_smoothing=options.label_smoothing, mixup=options.mixup,
                        cutmix=options.cutmix, mixup_prob=options.mixup_prob,
                        mixup_switch_prob=options.mixup_switch_prob, mixup_mode=options.mixup_mode,
                        layer_decay=cfg.optim.layer_decay, ema_decay=options.ema_decay,
                        ema_warmup=options.ema_warmup, ema_eval=options.ema_eval, val_loader=val_loader,
                        max_eval_batches=options.max_eval_batches)
    return task, loader

