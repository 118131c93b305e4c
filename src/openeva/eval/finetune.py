"""The ``finetune`` evaluation task: fine-tune a backbone on ``train_dataset`` with the training engine, then
report top-1 / top-5 of the fine-tuned classifier (EMA weights when the recipe keeps an EMA) on ``dataset``.

The recipe is a training config (the ``finetune_*`` recipes (``openeva.configs``), a ``TrainConfig`` with
``task="finetune"``) plus ``key=value`` overrides; without one, a short
default recipe (:func:`default_finetune_config`) is used. The model, the datasets and the output folder come
from ``evaluate(...)``; the run directory (config, metrics, checkpoints, ``final/`` model) is kept under
``output_dir/finetune_runs/`` so the classifier can be reused.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from pathlib import Path

import torch

from openeva.data.image_lists import LabelledImages
from openeva.data.labelled import align_classes
from openeva.data.transforms import PreprocessConfig, image_transform
from openeva.eval.features import encode_images
from openeva.eval.results import RUNS_DIR
from openeva.factory import preprocess_cfg, resolve_spec
from openeva.runtime import resolve_device
from openeva.metrics import classification_metrics
from openeva.models.vit import EVAViT
from openeva.configs import load_config
from openeva.train.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from openeva.train.distributed import World
from openeva.train.engine import Trainer
from openeva.train.finetune_task import build_finetune
from openeva.train.options import FinetuneOptions, canonical_task
from openeva.train.runner import preflight

logger = logging.getLogger(__name__)



def default_finetune_config():
    """A short, generic recipe for small datasets: AdamW lr 1e-4 (batch 64), layer decay 0.75, 10 epochs (10%
    warmup, set by :func:`run_finetune`), label smoothing 0.1, RandAugment, drop path 0.1, detached patch
    embedding, no EMA (too few steps for one). ``finetune_eva02_B`` / ``finetune_eva02_L`` hold the published recipes."""
    return TrainConfig(
        task="finetune",
        model=ModelConfig(name="eva02_test_patch8_32", drop_path_rate=0.1),
        data=DataConfig(train="synthetic", batch_size=64, val=None, zeroshot=None, scale=(0.08, 1.0)),
        optim=OptimConfig(optimizer="adamw", lr=1e-4, layer_decay=0.75, weight_decay=0.05, betas=(0.9, 0.999),
                          eps=1e-8, grad_clip=None),
        schedule=ScheduleConfig(scheduler="cosine", warmup_steps=0, epochs=10),
        save_every=10**9, log_every=10, tensorboard=False, plot=True,
        task_options={"label_smoothing": 0.1},
    )


def load_finetune_config(config=None, overrides=()):
    """A ``TrainConfig`` from a config file / ``TrainConfig`` / None (the default recipe), with overrides."""
    if config is None:
        cfg = default_finetune_config().with_overrides(list(overrides))
    elif isinstance(config, TrainConfig):
        cfg = config.with_overrides(list(overrides))
    else:
        cfg = load_config(config, list(overrides))
    if canonical_task(cfg.task) != "finetune":
        raise ValueError(f"finetune config {config} has task={cfg.task!r}; expected 'finetune'")
    return cfg


def _unique_run_dir(root: Path, name: str) -> Path:
    run = root / name
    k = 2
    while run.exists():
        run, k = root / f"{name}_{k}", k + 1
    return run


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name if "/" in text else text).strip("-") or "model"


def check_finetune_inputs(cfg, train_data, eval_data) -> None:
    """Fails before any compute: options, >= 2 classes, evaluation classes known to the training data."""
    options = FinetuneOptions.from_dict(cfg.task_options)
    present = len(set(train_data.labels))
    if train_data.num_classes < 2 or present < 2:
        raise ValueError(f"finetune: training dataset {train_data.name} has {present} class(es) with images; "
                         "classification needs at least 2")
    if options.num_classes is not None and options.num_classes != train_data.num_classes:
        raise ValueError(f"finetune: task_options.num_classes={options.num_classes} but the training dataset has "
                         f"{train_data.num_classes} classes")
    align_classes(eval_data, train_data.classnames, f"evaluation dataset {eval_data.name}")


def run_finetune(
    model,
    train_data,
    eval_data,
    *,
    cfg,
    pretrained: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 64,
    num_workers: int = 0,
    seed: int = 0,
    output_dir=None,
    progress: bool = True,
    warmup_fraction: float | None = None,
) -> tuple[dict, torch.Tensor, torch.Tensor, dict]:
    """Fine-tune ``model`` (name or built model) on ``train_data``, score ``eval_data``.

    Returns ``(metrics, scores (N, C), labels (N,), extra)``; ``extra`` holds result fields (run directory,
    steps, recipe summary, skipped images). ``precision`` is for the final scoring; training uses the
    config's ``precision``. ``warmup_fraction`` sets the warmup to that fraction of the run's steps (the
    default recipe's 10%); a configured warmup longer than the run is cut to 10% of it.
    """
    eval_data = align_classes(eval_data, train_data.classnames, f"evaluation dataset {eval_data.name}")
    model_label = model if isinstance(model, str) else type(model).__name__
    cfg = cfg.replace(seed=seed, progress=progress,
                      # an explicit ``pretrained`` wins; otherwise the recipe's own stays (never silently dropped)
                      model=dataclasses.replace(cfg.model, name=model if isinstance(model, str) else cfg.model.name,
                                                pretrained=pretrained if pretrained is not None
                                                else cfg.model.pretrained),
                      data=dataclasses.replace(cfg.data, val=None))
    world = World(device=resolve_device(device))
    tmp = None
    if output_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="openeva-finetune-")
        root = Path(tmp.name)
    else:
        root = Path(output_dir) / RUNS_DIR
    run_dir = _unique_run_dir(root, f"{_slug(train_data.name)}__{_slug(model_label)}")
    cfg = cfg.replace(output_dir=str(root), name=run_dir.name)
    try:
        preflight(cfg)  # the runner's checks, as `openeva train` makes them (options, model, run directory)
        task, loader = build_finetune(cfg, world, model=None if isinstance(model, str) else model,
                                      train_data=train_data)
        total = cfg.schedule.total_steps or cfg.schedule.epochs * (len(loader) // cfg.optim.accum_steps)
        warmup = cfg.schedule.warmup_steps if warmup_fraction is None else round(warmup_fraction * total)
        if warmup > total:
            logger.warning("finetune: warmup of %d steps exceeds the %d-step run; using %d", warmup, total,
                           total // 10)
            warmup = total // 10
        cfg = cfg.replace(schedule=dataclasses.replace(cfg.schedule, warmup_steps=warmup))
        summary = Trainer(cfg, task, loader, world, run_dir).fit()
        classifier = task.eval_model.eval()
        enc = encode_images(classifier, LabelledImages(eval_data.images, _val_transform(classifier)),
                            batch_size=batch_size, device=world.device, precision=precision,
                            num_workers=num_workers, progress=progress, desc=f"scoring {eval_data.name}")
        with torch.no_grad():
            scores = classifier.head(enc.features.to(world.device)).float().cpu()  # (N, C) logits
    finally:
        if tmp is not None:
            tmp.cleanup()
    labels = torch.tensor(eval_data.labels)[enc.indices]
    metrics = classification_metrics(scores, labels, train_data.num_classes)
    o = cfg.optim
    extra = {
        "num_train": len(train_data.labels), "steps": summary["step"], "epochs": cfg.schedule.epochs,
        "skipped_train_samples": summary["skipped_samples"], "ema": task.ema is not None and task.ema_eval,
        "run_dir": None if tmp is not None else str(run_dir),
        "recipe": {"lr": o.lr, "layer_decay": o.layer_decay, "weight_decay": o.weight_decay,
                   "batch_size": cfg.data.batch_size, "total_steps": summary["total_steps"],
                   "precision": cfg.precision, **cfg.task_options},
        "num_skipped": len(eval_data.skipped) + len(enc.skipped),
        "skipped_files": (list(eval_data.skipped) + [eval_data.images.ids[i] for i in enc.skipped])[:20],
    }
    return metrics, scores, labels, extra


def _val_transform(classifier):
    pre = preprocess_cfg(classifier) if getattr(classifier, "spec", None) is not None else {
        "size": classifier.cfg.img_size}
    return image_transform(PreprocessConfig.from_dict(pre), is_train=False)


def check_finetune_model(model) -> None:
    """A model name must resolve; a built model must be an EVA ViT or an EVA-CLIP (its vision tower)."""
    if isinstance(model, str):
        resolve_spec(model)
    elif not isinstance(getattr(model, "visual", model), EVAViT):
        raise ValueError(f"finetune needs an EVA ViT backbone or an EVA-CLIP model, got {type(model).__name__}")
