"""EVA-02 masked image modelling as a Task on the one training engine (Fang et al., 2023, arXiv 2303.11331).

One method per paper step, as MAE writes it: ``masks`` (block-wise, from the batch or drawn here), ``encode``
(student tokens with masked patches swapped for the mask token), ``predict`` (``lm_head`` on every patch),
``targets`` (frozen CLIP teacher patch features on the same crop, or normalised pixels) and ``loss`` (negative
cosine similarity, or MAE's pixel MSE, over masked tokens only). The engine owns precision, optimiser,
schedule, checkpoints and logging.

Runs: a :class:`~openeva.train.config.TrainConfig` with ``task="mim"`` (see
the ``mim_*`` recipes (``openeva.configs``)), the student in ``model`` (``name``, ``img_size``, ``drop_path_rate``, ``pretrained``
to continue MIM), the images in ``data`` (any CLIP source; captions ignored; ``data.scale`` (0.2, 1) for the
recipe) and the MIM settings in ``task_options`` (:class:`MIMOptions`: teacher, masking, target). ``pretrain``
runs one and leaves ``RUN/final``, a plain backbone checkpoint (see :mod:`openeva.models.mim`).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from openeva.data.loader import collate_skip_none
from openeva.data.sources import source_kind
from openeva.data.transforms import PreprocessConfig, image_transform
from openeva.evaluators.distributed import all_sum, rank_positions
from openeva.factory import build_config, build_student, build_teacher, resolve_spec
from openeva.runtime import resolve_precision
from openeva.losses.mim import mim_cosine_loss, patchify, pixel_regression_loss
from openeva.models.mim import ClipTeacher, MIMStudent
from openeva.train.data import ResumableLoader, build_image_text_dataset, build_val_pairs, check_sources, derive_seed
from openeva.train.config import TrainConfig, load_config
from openeva.train.options import TARGETS, MIMOptions, canonical_task
from openeva.train.runner import run_dir_of, train
from openeva.train.preflight import check_weights, resolve_model
from openeva.train.distributed import builds_on_meta
from openeva.train.task import ParamGroupSpec, Task

logger = logging.getLogger(__name__)



class MIMTask(Task):
    """Student regresses the teacher's features of masked patches.

    ``target="clip"`` needs ``teacher`` (a :class:`ClipTeacher`; ``student.target_dim`` must equal its feature
    dim); ``target="pixel"`` is the MAE baseline (``student.target_dim = patch**2 * 3``, ``norm_pix`` per-patch
    normalised targets). Batches are ``(images, masks)`` as :func:`with_masks` datasets give them through
    ``collate_skip_none`` (masks (B, h, w) or (B, N), True = masked); batches without a bool mask column get
    masks from ``mask_generator``.
    ``layer_decay`` < 1 gives the student layer-wise lr decay; ``val_data`` ((image, mask) samples, see
    :class:`MaskedImages`) makes :meth:`evaluate` report the loss on held-out images with fixed masks.
    The teacher lives inside the Task (frozen, eval mode) but is left out of its ``state_dict``: it is rebuilt
    from the run config, so checkpoints hold only what trains.
    """

    def __init__(
        self,
        student: MIMStudent,
        teacher: ClipTeacher | None = None,
        target: str = "clip",
        norm_pix: bool = True,
        mask_generator=None,
        layer_decay: float = 1.0,
        val_data: Dataset | None = None,
        val_batch_size: int = 64,
    ):
        super().__init__()
        if not isinstance(student, MIMStudent):
            raise ValueError(f"student must be a MIMStudent (openeva.factory.build_student), got "
                             f"{type(student).__name__}")
        if target not in TARGETS:
            raise ValueError(f"MIM target must be one of {TARGETS}, got {target!r}")
        if target == "clip":
            if teacher is None:
                raise ValueError("target='clip' needs a teacher (openeva.factory.build_teacher)")
            if teacher.target_dim != student.target_dim:
                raise ValueError(f"student lm_head outputs {student.target_dim} features but the teacher gives "
                                 f"{teacher.target_dim}; build the student with target_dim={teacher.target_dim}")
        else:
            pixels = student.cfg.patch_size ** 2 * student.cfg.in_chans
            if student.target_dim != pixels:
                raise ValueError(f"the pixel target needs target_dim = patch**2 * channels = {pixels}, "
                                 f"got {student.target_dim}")
            teacher = None
        self.student = student
        self.teacher = teacher
        self.target = target
        self.norm_pix = norm_pix
        self.mask_generator = mask_generator
        self.layer_decay = float(layer_decay)
        self.val_data, self.val_batch_size = val_data, val_batch_size
        self.register_state_dict_post_hook(_drop_teacher_keys)
        self.register_load_state_dict_pre_hook(_teacher_keys_are_not_expected)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.student.cfg.grid_size

    # ------------------------------------------------------------------------------ one method per step
    def masks(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, 3, H, W), mask (B, N) bool) from a batch, drawing masks when the batch has none."""
        if batch is None:
            raise ValueError("empty batch (every sample failed to load)")
        if isinstance(batch, torch.Tensor):
            batch = (batch,)
        images = batch[0]
        last = batch[-1] if len(batch) > 1 else None
        if isinstance(last, torch.Tensor) and last.dtype == torch.bool:
            mask = last
        elif self.mask_generator is not None:
            mask = torch.stack([self.mask_generator(None) for _ in range(images.shape[0])])  # (B, h, w)
        else:
            raise ValueError("the batch has no bool mask column and the task has no mask_generator "
                             "(read the data through with_masks(...) or pass mask_generator=)")
        h, w = self.grid_size
        if tuple(images.shape[-2:]) != tuple(self.student.cfg.img_size):
            raise ValueError(f"images are {tuple(images.shape[-2:])} px but the student expects "
                             f"{self.student.cfg.img_size}")
        if mask.shape[-2:] == (h, w) and mask.ndim == 3:
            mask = mask.flatten(1)  # (B, N)
        if tuple(mask.shape) != (images.shape[0], h * w):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not fit batch {images.shape[0]} on the "
                             f"student's {h}x{w} patch grid")
        return images, mask.to(images.device)  # masks selecting nothing give a zero loss (no host sync to refuse)

    def encode(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) -> normalised student tokens (B, 1 + N, D)."""
        return self.student.forward_features(images, mask)

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, D) -> (B, N, C) predictions for every patch; :meth:`loss` weights the masked ones."""
        return self.student.predict_all(tokens)

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, C) per-patch targets on the student's grid (no gradient)."""
        if self.target == "clip":
            return self.teacher(images, self.grid_size)  # (B, N, C)
        return patchify(images.float(), self.student.cfg.patch_size)  # (B, N, p*p*3)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predictions (B, N, C) vs targets (B, N, C), averaged over the masked patches (mask (B, N)) of the
        batch as EVA-02 does, however many each image has."""
        if self.target == "clip":
            return mim_cosine_loss(pred, target, mask=mask)
        return pixel_regression_loss(pred, target, norm_pix=self.norm_pix, mask=mask)

    # ----------------------------------------------------------------------------------- the contract
    def forward(self, batch, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """``valid`` (B,) bool marks the images of a padded fixed-shape batch (None: all); a padding image's patches
        leave the loss as unmasked ones do."""
        images, mask = self.masks(batch)
        pred = self.predict(self.encode(images, mask))  # (B, N, C)
        loss = self.loss(pred, self.targets(images), mask if valid is None else mask & valid[:, None])
        metrics = {"loss": loss.detach(), "mask_ratio": mask.float().mean()}
        if self.target == "clip":
            metrics["cos_sim"] = -loss.detach()
        return loss, metrics

    def param_group_specs(self) -> list[ParamGroupSpec]:
        return [ParamGroupSpec(module=self.student, prefix="student", layer_decay=self.layer_decay)]

    @torch.no_grad()
    def evaluate(self, step: int, group=None) -> dict[str, float]:
        """The loss (and cosine similarity) on ``val_data`` averaged over all its masked patches: the same images and
        masks at every evaluation. Each rank of ``group`` scores its block of the images
        (:func:`~openeva.evaluators.distributed.rank_positions`) and the sums over patches are added, so the result is
        one process's whatever the number of ranks or the batch size."""
        if self.val_data is None:
            return {}
        part = torch.utils.data.Subset(self.val_data, rank_positions(len(self.val_data), group))
        loader = torch.utils.data.DataLoader(part, batch_size=self.val_batch_size, shuffle=False,
                                             collate_fn=collate_skip_none)
        device = self.student.cls_token.device
        sums = torch.zeros(2, dtype=torch.float64)  # loss summed over masked patches, masked patches
        for batch in loader:
            if batch is None:
                continue
            images, mask = self.masks([t.to(device) for t in batch])
            pred = self.predict(self.encode(images, mask))  # (B, N, C)
            patches = mask.sum()  # the loss is a mean over the batch's masked patches: times their count, a sum
            loss = self.loss(pred, self.targets(images), mask).double()
            sums += torch.stack([loss * patches, patches.double()]).cpu()
        total, count = all_sum(sums, group).tolist()
        if count == 0:
            return {}
        metrics = {"loss": total / count}
        if self.target == "clip":
            metrics["cos_sim"] = -metrics["loss"]
        return metrics

    def train(self, mode: bool = True) -> "MIMTask":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self


def _drop_teacher_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: the frozen teacher is rebuilt from the config, so checkpoints leave it out."""
    for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[key]


def _teacher_keys_are_not_expected(module, state_dict, prefix, local_metadata, strict, missing_keys,
                                   unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: lets a strict load of a checkpoint without teacher keys succeed by
    supplying the teacher's current tensors (they are frozen, so this is a no-op copy)."""
    teacher = getattr(module, "teacher", None)
    if teacher is None:
        return
    for name, tensor in teacher.state_dict().items():
        state_dict.setdefault(f"{prefix}teacher.{name}", tensor)


# ---------------------------------------------------------------------------------------------- data
def _mask_of(mask_generator, seed: int | None, index: int) -> torch.Tensor:
    if seed is None:  # the engine loads each training sample under its own seeded RNG stream
        return mask_generator(None)
    return mask_generator(torch.Generator().manual_seed(derive_seed(seed, index)))


class MaskedImages(Dataset):
    """``(image, mask)`` from any image(-text) dataset: captions dropped, one block mask (h, w) per image.

    Masks are drawn per sample, so they are as reproducible as the sample's crop: from the global RNG (which the
    training loader seeds per ``(seed, epoch, index)``), or from ``seed`` and the index alone (validation).
    Samples that fail to load stay ``None`` (the collate skips them).
    """

    def __init__(self, dataset: Dataset, mask_generator, seed: int | None = None):
        self.dataset, self.mask_generator, self.seed = dataset, mask_generator, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if sample is None:
            return None
        image = sample[0] if isinstance(sample, (tuple, list)) else sample
        return image, _mask_of(self.mask_generator, self.seed, index)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    @property
    def skipped(self):
        return getattr(self.dataset, "skipped", None)


class MaskedImageStream(IterableDataset):
    """:class:`MaskedImages` for streams (tar shards)."""

    def __init__(self, dataset: IterableDataset, mask_generator):
        self.dataset, self.mask_generator = dataset, mask_generator

    def __iter__(self):
        for sample in self.dataset:
            if sample is None:
                yield None
                continue
            image = sample[0] if isinstance(sample, (tuple, list)) else sample
            yield image, self.mask_generator(None)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    @property
    def skipped(self):
        return getattr(self.dataset, "skipped", None)


def with_masks(dataset, mask_generator, seed: int | None = None):
    if isinstance(dataset, IterableDataset):
        return MaskedImageStream(dataset, mask_generator)
    return MaskedImages(dataset, mask_generator, seed)


# ------------------------------------------------------------------------------------ build / preflight
def preflight_mim(cfg) -> MIMOptions:
    """Every check that needs no compute: student and teacher names, weight files, masking, data paths."""
    opts = MIMOptions.from_dict(cfg.task_options)
    student_spec, _ = resolve_model("model.name", cfg.model.name)
    if student_spec.is_clip:
        raise ValueError(f"model.name={cfg.model.name!r} is a CLIP model; the MIM student is a backbone "
                         "(e.g. eva02_base_patch14_224; see `openeva models --kind backbone`)")
    if cfg.model.patch_dropout:
        raise ValueError("model.patch_dropout must be 0 for MIM (every patch is either seen or predicted)")
    check_weights("model.pretrained", cfg.model.pretrained)
    if opts.target == "clip":
        teacher_spec, saved = resolve_model("task_options.teacher", opts.teacher)
        if not teacher_spec.is_clip:
            raise ValueError(f"task_options.teacher={opts.teacher!r} is not a CLIP model")
        weights = opts.teacher_pretrained
        if weights is None and saved is None:
            raise ValueError("task_options.teacher_pretrained is not set: MIM against an untrained teacher learns "
                             "nothing useful. Give its checkpoint (EVA-CLIP .pt, open_clip .bin, timm, openeva "
                             "directory) or a tag, or 'random' for smoke tests")
        if weights != "random":
            check_weights("task_options.teacher_pretrained", weights)
    grid = build_config(student_spec, img_size=cfg.model.img_size).grid_size
    opts.mask_generator(grid)  # raises on masking that does not fit the grid
    check_sources(cfg.data.sources())
    if cfg.data.val not in (None, "synthetic") and source_kind(str(cfg.data.val)) is None:  # a path or a URL
        raise FileNotFoundError(f"data.val: not found: {cfg.data.val}")
    return opts


def build_mim_task(cfg, opts: MIMOptions | None = None, device="cpu") -> MIMTask:
    """The MIMTask of a TrainConfig (models only; no data): teacher, student sized to its targets."""
    opts = opts or MIMOptions.from_dict(cfg.task_options)
    student_spec, _ = resolve_spec(cfg.model.name)
    teacher = None
    if opts.target == "clip":
        weights = opts.teacher_pretrained
        if weights == "random":
            logger.warning("MIM teacher %s is untrained (teacher_pretrained=random): a smoke test, not pretraining",
                           opts.teacher)
            weights = None
        teacher_precision, _ = resolve_precision(opts.teacher_precision, device)  # fp16 is not a teacher choice
        teacher = build_teacher(opts.teacher, pretrained=weights, precision=teacher_precision,
                                input_mean=student_spec.mean, input_std=student_spec.std)
        target_dim = teacher.target_dim
    else:
        c = build_config(student_spec, img_size=cfg.model.img_size)
        target_dim = c.patch_size ** 2 * c.in_chans  # one normalised pixel patch
    # model.pretrained continues MIM from a student checkpoint (e.g. IN-21K -> Merged-38M)
    student = build_student(cfg.model.name, target_dim, img_size=cfg.model.img_size,
                            drop_path_rate=cfg.model.drop_path_rate or 0.0,
                            patch_embed_grad_scale=opts.patch_embed_grad_scale, pretrained=cfg.model.pretrained)
    if cfg.model.grad_checkpointing:
        student.set_grad_checkpointing(True)
    return MIMTask(student, teacher, target=opts.target, norm_pix=opts.norm_pix,
                   mask_generator=opts.mask_generator(student.cfg.grid_size), layer_decay=cfg.optim.layer_decay)


def build_mim(cfg, world):
    """(MIMTask, ResumableLoader) for a TrainConfig on this process: the engine's ``build(cfg, world)``."""
    opts = MIMOptions.from_dict(cfg.task_options)
    meta = builds_on_meta(world, cfg.dist.strategy, cfg.dist.meta_init)  # shapes only: rank 0 sends the weights
    with torch.device("meta") if meta else contextlib.nullcontext():
        task = build_mim_task(cfg, opts, world.device)
    student = task.student
    pre = PreprocessConfig.from_dict(student.spec.preprocess_cfg(student.cfg.img_size))
    # student and teacher see this one crop: the teacher gets the same tensor (resized when its size differs)
    train_tf = image_transform(pre, is_train=True, scale=tuple(cfg.data.scale), hflip=opts.hflip)
    size = int(student.cfg.img_size[0])
    d = cfg.data
    images = build_image_text_dataset(d, train_tf, None, size, cfg.seed, world.rank, world.world_size,
                                      images_only=True)  # captions ignored: any image source will do
    train = with_masks(images, task.mask_generator)
    loader = ResumableLoader(train, d.batch_size, rank=world.rank, world_size=world.world_size, seed=cfg.seed,
                             num_workers=d.num_workers, pin_memory=world.device.type == "cuda",
                             samples_per_epoch=d.train_num_samples)
    val = build_val_pairs(d, image_transform(pre, is_train=False), None, size, cfg.seed, images_only=True)
    if val is not None:  # on every rank: each scores its share
        task.val_data = MaskedImages(val, task.mask_generator, seed=cfg.seed + 3_000_017)
        task.val_batch_size = min(d.batch_size * 2, 256)
    return task, loader



# ----------------------------------------------------------------------------------------------- run
def pretrain(config, overrides=(), world=None) -> Path:
    """Run MIM pretraining to completion (or ``max_steps_this_run``); returns the run directory.

    ``config``: a TrainConfig or a config file, with ``key=value`` ``overrides`` (a shipped ``mim_*`` recipe by
    name: ``pretrain(openeva.configs.load_config("mim_b"))``).
    The run directory is the engine's (config.json, metrics.jsonl, tb/, plots/, checkpoints/); when the run
    completes, ``RUN/final`` holds the student as a plain backbone checkpoint: ``create_model(RUN/final)``,
    ``create_model(name, pretrained=RUN/final, num_classes=K)`` and CLIP training's
    ``model.pretrained_image=RUN/final`` all take it directly.
    """
    cfg = config if isinstance(config, TrainConfig) else load_config(config, overrides)
    if isinstance(config, TrainConfig) and overrides:
        cfg = cfg.with_overrides(list(overrides))
    if canonical_task(cfg.task) != "mim":
        raise ValueError(f"task={cfg.task!r} is not MIM pretraining; set task='mim' (or use `openeva train`)")
    summary = train(cfg, world)
    return Path(summary.get("run_dir") or run_dir_of(cfg))
