"""Semantic segmentation fine-tuning: EVA-02 ViT -> ViTDet simple feature pyramid -> a light decoder.

The decoder is the "semantic FPN" head made small (Kirillov et al., 2019): every pyramid level goes through a
3x3 conv + GroupNorm + ReLU, is upsampled to the stride-4 level and summed, then a 1x1 conv gives per-class
logits, upsampled bilinearly to the image. Classes: 0 = background, 1..C = the dataset's names; mask value
255 is ignored by the loss and the metrics. Runs through the one engine like every task:

    openeva train segment_tiny                      # synthetic multi-shape scenes, CPU, minutes
    openeva train segment_tiny data.train=data/seg data.val=data/seg_val  # images/ + masks/ folders

``task_options``: ``classnames`` (list or file; default: ``classnames.txt`` in the data folder),
``out_channels`` (pyramid width), ``decoder_channels``, ``window_size`` / ``global_blocks`` (ViTDet
attention layout), ``synthetic_label_by`` ("color" | "shape"), ``hflip`` (probability).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from openeva.data.classnames import load_classnames
from openeva.data.loader import collate_skip_none
from openeva.data.segmentation import IGNORE_INDEX, SegmentationFolder
from openeva.data.synthetic import ShapeScenes
from openeva.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from openeva.dense.pyramid import SimpleFeaturePyramid
from openeva.evaluators import MIoU, MIoUOptions, Segmented
from openeva.factory import create_model, resolve_spec
from openeva.train.data import ResumableLoader
from openeva.train.distributed import builds_on_meta
from openeva.train.evals import rank_share, select_evals
from openeva.train.options import SegmentationOptions
from openeva.train.task import ParamGroupSpec, Task


class SemanticFPNDecoder(nn.Module):
    """{"p2".."p5"} -> (B, num_classes, H/4, W/4) logits at the finest level's stride."""

    def __init__(self, in_channels: int, num_levels: int, num_classes: int, channels: int = 64):
        super().__init__()
        groups = max(1, min(32, channels // 4))
        self.lateral = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.GroupNorm(groups, channels), nn.ReLU())
            for _ in range(num_levels)])
        self.classify = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        maps = list(feats.values())
        size = maps[0].shape[-2:]  # the finest level
        x = sum(F.interpolate(conv(m), size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size
                else conv(m) for conv, m in zip(self.lateral, maps))  # (B, channels, h, w)
        return self.classify(x)


class SegmentationModel(nn.Module):
    """``forward(images (B, 3, H, W)) -> logits (B, num_classes, H, W)``; layer ids for layer-wise lr decay."""

    def __init__(self, backbone: nn.Module, num_classes: int, out_channels: int = 64, decoder_channels: int = 64,
                 window_size: int | None = None, global_blocks: tuple[int, ...] = ()):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"segmentation needs at least 2 classes (background + 1), got {num_classes}")
        self.num_classes = num_classes
        self.pyramid = SimpleFeaturePyramid(backbone, out_channels, window_size=window_size,
                                            global_blocks=global_blocks)
        self.decoder = SemanticFPNDecoder(out_channels, len(self.pyramid.strides), num_classes, decoder_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.pyramid(images))  # (B, K, H/4, W/4)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    # hooks for the optimizer groups
    def no_weight_decay(self) -> set[str]:
        return {f"pyramid.backbone.{n}" for n in self.pyramid.backbone.no_weight_decay()}

    @property
    def num_layers(self) -> int:
        return self.pyramid.backbone.num_layers

    def layer_id(self, name: str) -> int:
        prefix = "pyramid.backbone."
        if name.startswith(prefix):
            return self.pyramid.backbone.layer_id(name[len(prefix):])
        return self.num_layers - 1  # pyramid convs and decoder: the full learning rate


def evaluate_segmenter(model: nn.Module, loader: Iterable, num_classes: int, device=None,
                       group=None) -> dict[str, float]:
    """mIoU / pixel accuracy / loss of ``model`` over ``loader`` batches of (images, masks): the
    :class:`~openeva.evaluators.MIoU` evaluator (with the loss), each rank of ``group`` scoring its share
    (:func:`~openeva.train.evals.rank_share`), the confusion matrices summed."""
    data, batching = rank_share(loader, group)
    evaluator = MIoU(MIoUOptions(ignore_index=IGNORE_INDEX, loss=True), batching)
    return evaluator.run(model, Segmented(data, num_classes), device=device if device is not None else "cpu",
                         group=group)


class SegmentationTask(Task):
    """Per-pixel cross-entropy (ignore 255) of a :class:`SegmentationModel`; ``evaluate`` reports val mIoU."""

    def __init__(self, model: SegmentationModel, layer_decay: float = 1.0, val_loader: Iterable | None = None):
        super().__init__()
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        self.model, self.layer_decay, self.val_loader = model, float(layer_decay), val_loader

    def forward(self, batch, valid: torch.Tensor | None = None):
        """``valid`` (B,) bool marks the images of a padded fixed-shape batch (None: all): a padding image's
        pixels are ignored like unlabelled ones. Means over the labelled pixels, without a host sync."""
        images, masks = batch
        if valid is not None:
            masks = torch.where(valid[:, None, None], masks, IGNORE_INDEX)  # (B, H, W)
        logits = self.model(images)  # (B, K, H, W)
        keep = masks != IGNORE_INDEX  # (B, H, W)
        count = keep.sum().clamp(min=1)  # no labelled pixel: a zero loss, not 0 / 0
        loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum") / count
        with torch.no_grad():
            acc = ((logits.argmax(1) == masks) & keep).sum() / count
        return loss, {"pixel_acc": acc}

    def param_group_specs(self) -> list[ParamGroupSpec]:
        return [ParamGroupSpec(module=self.model, prefix="model", layer_decay=self.layer_decay)]

    def evaluate(self, step: int, group=None) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        device = next(self.model.parameters()).device
        return evaluate_segmenter(self.model, self.val_loader, self.model.num_classes, device, group)


# ------------------------------------------------------------------------------------------- config -> task
class PairedSegmentation(torch.utils.data.Dataset):
    """(PIL image, mask) pairs -> (normalised (3, S, S) tensor, (S, S) int64 mask), optional joint h-flip."""

    def __init__(self, data, size: int, mean, std, hflip: float = 0.0, train: bool = False):
        self.data, self.size, self.hflip, self.train = data, size, hflip, train
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        image, mask = self.data[i]
        image = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        mask = Image.fromarray(np.asarray(mask, dtype=np.uint8)).resize((self.size, self.size), Image.NEAREST)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
        y = torch.from_numpy(np.asarray(mask, dtype=np.int64).copy())  # (S, S)
        if self.train and self.hflip > 0 and torch.rand(()) < self.hflip:
            x, y = x.flip(-1), y.flip(-1)
        return (x - self.mean) / self.std, y


def _folder(path: str, classnames):
    if classnames is None:
        guess = Path(path) / "classnames.txt"
        if not guess.is_file():
            raise ValueError(f"task_options.classnames is needed (names of mask values 1..C) or {guess}")
        classnames = str(guess)
    names = load_classnames(classnames if isinstance(classnames, str) else list(classnames))
    return SegmentationFolder(path, classnames=names)


def preflight_segmentation(cfg) -> None:
    opts = SegmentationOptions.from_dict(cfg.task_options)
    select_evals(cfg, ("miou",))  # segmentation validates with mIoU
    try:
        resolve_spec(cfg.model.name)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"model.name: {e}") from None
    sources = cfg.data.sources()
    if len(sources) != 1:
        raise ValueError(f"data.train: segmentation takes one dataset, got {len(sources)} sources")
    if sources[0] != "synthetic":
        train = _folder(sources[0], opts.classnames)
        if cfg.data.val not in (None, "synthetic"):
            val = _folder(cfg.data.val, opts.classnames)
            if val.classnames != train.classnames:
                raise ValueError("data.val has different class names from data.train")


def build_segmentation(cfg, world):
    """(SegmentationTask, ResumableLoader) for a ``TrainConfig`` with ``task="segmentation"``."""
    opts = SegmentationOptions.from_dict(cfg.task_options)
    d, m = cfg.data, cfg.model
    kwargs = {"img_size": m.img_size} if m.img_size else {}
    if m.drop_path_rate is not None:
        kwargs["drop_path_rate"] = m.drop_path_rate
    meta = builds_on_meta(world, cfg.dist.strategy, cfg.dist.meta_init)  # shapes only: rank 0 sends the weights
    if meta:
        kwargs["device"] = "meta"
    built = create_model(m.name, None if meta else m.pretrained, **kwargs)
    backbone = getattr(built, "visual", built)  # a CLIP contributes its image tower
    size = int(backbone.cfg.img_size[0])
    if d.sources() == ["synthetic"]:
        train_src = ShapeScenes(d.synthetic_num_samples, size, seed=cfg.seed, label_by=opts.synthetic_label_by)
        val_src = None if d.val is None else ShapeScenes(d.val_num_samples, size, seed=cfg.seed + 1_000_003,
                                                         label_by=opts.synthetic_label_by)
        classnames = train_src.classes
    else:
        train_src = _folder(d.sources()[0], opts.classnames)
        val_src = None if d.val in (None, "synthetic") else _folder(d.val, opts.classnames)
        classnames = train_src.classnames
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = SegmentationModel(backbone, len(classnames) + 1, opts.out_channels, opts.decoder_channels,
                                  opts.window_size, opts.global_blocks)
    if m.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    train = PairedSegmentation(train_src, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, opts.hflip, train=True)
    loader = ResumableLoader(train, d.batch_size, rank=world.rank, world_size=world.world_size, seed=cfg.seed,
                             num_workers=d.num_workers)
    val_loader = None
    if val_src is not None and "miou" in select_evals(cfg, ("miou",)):  # on every rank: each scores its share
        val = PairedSegmentation(val_src, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        val_loader = torch.utils.data.DataLoader(val, batch_size=min(2 * d.batch_size, 64), shuffle=False,
                                                 num_workers=d.num_workers, collate_fn=collate_skip_none)
    return SegmentationTask(model, cfg.optim.layer_decay, val_loader), loader


build_segmentation.preflight = preflight_segmentation
