"""Frozen-feature encoding for evaluation, with an on-disk cache.

Linear probe and kNN train on features of a frozen model, so encoding a dataset once and keeping the
result under a hash of (model, checkpoint, dataset, transform, precision) saves the expensive part of
repeated runs (e.g. a weight-decay sweep, or kNN after a probe).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from openeva.data.loader import collate_skip_none
from openeva.runtime import atomic_write, autocast, dtype_of



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


@dataclass
class EncodedImages:
    """Features of the images that decoded; ``indices`` map rows back to dataset positions."""

    features: torch.Tensor  # (M, E) float32 on CPU
    indices: torch.Tensor  # (M,) long, positions in the dataset
    skipped: list[int]  # dataset positions whose image failed to decode

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


@torch.no_grad()
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
) -> EncodedImages:
    """Encode every image of a :class:`~openeva.data.image_lists.LabelledImages` without targets (items:
    ``(tensor, position)``, or None for an image that failed to load; the skipping collate drops those)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dtype_of(precision)  # refuses an unknown name
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_skip_none
    )
    feats, indices = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        if batch is None:  # every image of the batch failed
            continue
        images, idx = batch  # (B', 3, H, W), (B',)
        with autocast(precision, device):
            out = image_features(model, images.to(device))  # (B, E)
        feats.append(out.float().cpu())
        indices.append(idx)
    if not feats:
        raise ValueError(f"no image of the dataset could be decoded ({len(dataset)} failed)")
    kept = torch.cat(indices)
    skipped = sorted(set(range(len(dataset))) - set(kept.tolist()))
    return EncodedImages(torch.cat(feats), kept, skipped)


@torch.no_grad()
def encode_texts(
    model,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: bool = False,
    desc: str = "encoding texts",
) -> torch.Tensor:
    """(N,) texts -> (N, E) float32 CPU embeddings (not normalized)."""
    if not has_text_tower(model):
        raise TypeError(f"{type(model).__name__} has no encode_text; this task needs a CLIP model")
    out = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        tokens = tokenizer(list(texts[start:start + batch_size])).to(device)  # (B, 77)
        with autocast(precision, device):
            out.append(model.encode_text(tokens, normalize=False).float().cpu())  # (B, E)
    return torch.cat(out)


# --------------------------------------------------------------------------------------------- cache
def checkpoint_fingerprint(pretrained: str | None) -> str:
    """A tag names itself; a checkpoint file is identified by path, size and modification time."""
    if pretrained is None:
        return "none"
    p = Path(pretrained)
    if p.exists():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return str(pretrained)


def _hash_value(h, name: str, value) -> None:
    """Feed one state-dict entry: a tensor (quantized ones by their integers, scales and zero points), or the
    tuples and dtypes that int8 packed params hold."""
    if isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _hash_value(h, f"{name}.{i}", v)
        return
    if not isinstance(value, torch.Tensor):
        h.update(f"{name}:{value!r}".encode())
        return
    if value.is_quantized:
        h.update(f"{name}:q:{value.qscheme()}".encode())
        scales = value.q_per_channel_scales() if value.qscheme() in (torch.per_channel_affine,
                                                                     torch.per_channel_symmetric) else None
        _hash_value(h, f"{name}.scale", scales if scales is not None else torch.tensor(value.q_scale()))
        value = value.int_repr()
    t = value.detach().cpu().contiguous().reshape(-1)
    h.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes())


def model_fingerprint(model) -> str:
    """Hash of a model object's class, weights and inference options, for models passed in already built.

    Token merging and int8 change the features without changing (merging) or while repacking (int8) the state
    dict, so both are part of the key: a merged model never reuses an unmerged model's cached features.
    """
    from openeva.models.int8 import is_int8
    from openeva.models.tome import tome_tokens

    h = hashlib.sha256(type(model).__qualname__.encode())
    if isinstance(model, torch.nn.Module):
        try:
            merged = tome_tokens(model)
        except TypeError:  # not an EVA tower: no merging possible
            merged = None
        h.update(f"tome={merged};int8={is_int8(model)}".encode())
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name, value in state.items():
        _hash_value(h, name, value)
    if not state:
        h.update(repr(model).encode())
    return h.hexdigest()


def cache_key(**parts) -> str:
    """Stable hash of the JSON-serialised parts (model, checkpoint, dataset, transform, precision, ...)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class FeatureCache:
    """Encoded features on disk, one ``<key>.pt`` per (model, checkpoint, dataset, transform, precision)."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)

    def path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.pt"

    def load(self, key: str) -> EncodedImages | None:
        path = self.path(key)
        if not path.is_file():
            return None
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return EncodedImages(blob["features"], blob["indices"], list(blob["skipped"]))

    def save(self, key: str, encoded: EncodedImages, meta: dict | None = None) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        blob = {"features": encoded.features, "indices": encoded.indices, "skipped": list(encoded.skipped),
                "meta": json.dumps(meta or {}, default=str)}
        atomic_write(path, lambda tmp: torch.save(blob, tmp))  # a crash never leaves a half-written entry
        return path
