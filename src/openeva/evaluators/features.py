"""Features of a frozen model over a dataset: what zero-shot, retrieval, kNN and the linear probe score.

:func:`extract` runs a function over this rank's batches (under the precision's autocast, outputs in fp32 on
the CPU) and, when asked, gathers every rank's rows back into dataset order. :func:`encode_images` is its
most common use: the image embedding of a CLIP, or a backbone's pooled pre-logits features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from openeva.evaluators.base import Batching, check_gatherable, rank_batches
from openeva.evaluators.distributed import all_gather_rows
from openeva.runtime import autocast, dtype_of


def has_image_tower(model) -> bool:
    return hasattr(model, "encode_image") or (
        hasattr(model, "forward_features") and hasattr(model, "forward_head")
    )


def has_text_tower(model) -> bool:
    return hasattr(model, "encode_text")


def image_features(model, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, E): CLIP image embedding, or a backbone's pooled pre-logits features."""
    if hasattr(model, "encode_image"):
        return model.encode_image(images, normalize=False)
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(images), pre_logits=True)
    raise TypeError(
        f"{type(model).__name__} has neither encode_image nor forward_features/forward_head; cannot encode images"
    )


@torch.no_grad()
def extract(fn: Callable[[list], tuple[torch.Tensor, ...]], data, batching: Batching, *,
            device: str | torch.device = "cpu", precision: str = "fp32", group=None, gather: bool = False,
            desc: str = "encoding", empty: str | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """``fn(columns) -> (out_1 (B, ...), ...)`` over this rank's batches -> ([out_1 (M, ...), ...], positions (M,)).

    ``columns`` are the batch's columns with the inputs already on ``device``. With ``gather`` (a dataset is
    needed), every rank gets every rank's rows, sorted by dataset position, as one process would. ``empty`` is
    the error when no sample of this rank's part could be read."""
    dtype_of(precision)  # refuses an unknown name
    if gather:
        check_gatherable(data, desc)
    outs: list[list[torch.Tensor]] = []
    positions: list[torch.Tensor] = []
    for columns, pos in rank_batches(data, batching, group, desc):
        columns = [c.to(device) if isinstance(c, torch.Tensor) else c for c in columns]
        with autocast(precision, device):
            result = fn(columns)
        result = result if isinstance(result, tuple) else (result,)
        outs.append([r.float().cpu() if r.is_floating_point() else r.cpu() for r in result])
        if pos is not None:
            positions.append(torch.as_tensor(pos).long())
    if not outs:  # nothing decoded: no row shapes to return
        raise ValueError(empty or f"{desc}: no sample could be read")
    merged = [torch.cat(column) for column in zip(*outs)]
    pos = torch.cat(positions) if positions else None
    if gather:
        merged = [all_gather_rows(m, group) for m in merged]
        pos = all_gather_rows(pos, group)
        order = pos.argsort()
        merged, pos = [m[order] for m in merged], pos[order]
    return merged, pos


@dataclass
class EncodedImages:
    """Features of the images that decoded; ``indices`` map rows back to dataset positions."""

    features: torch.Tensor  # (M, E) float32 on CPU
    indices: torch.Tensor  # (M,) long, positions in the dataset
    skipped: list[int]  # dataset positions whose image failed to decode

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def encode_images(
    model,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "encoding images",
    group=None,
) -> EncodedImages:
    """Encode every image of a :class:`~openeva.data.image_lists.LabelledImages` without targets (items:
    ``(tensor, position)``, or None for an image that failed to load; the skipping collate drops those).
    With a process group each rank encodes its block and every rank returns all of them."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batching = Batching(batch_size, num_workers, progress)
    (feats,), kept = extract(lambda cols: image_features(model, cols[0]), dataset, batching, device=device,
                             precision=precision, group=group, gather=True, desc=desc,
                             empty=f"no image of the dataset could be decoded ({len(dataset)} failed)")  # (M, E)
    skipped = sorted(set(range(len(dataset))) - set(kept.tolist()))
    return EncodedImages(feats, kept, skipped)
