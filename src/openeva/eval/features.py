"""The on-disk cache of frozen features for ``openeva eval``.

Linear probe and kNN train on features of a frozen model, so encoding a dataset once and keeping the
result under a hash of (model, checkpoint, dataset, transform, precision) saves the expensive part of
repeated runs (e.g. a weight-decay sweep, or kNN after a probe). The encoding itself is
:mod:`openeva.evaluators.features` (its names are re-exported here, where they have always been importable).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from openeva.evaluators.features import EncodedImages, encode_images, has_image_tower, has_text_tower, image_features
from openeva.evaluators.text import encode_texts
from openeva.models.int8 import is_int8
from openeva.models.tome import tome_tokens
from openeva.runtime import atomic_write

__all__ = [
    "EncodedImages", "FeatureCache", "cache_key", "checkpoint_fingerprint", "encode_images", "encode_texts",
    "has_image_tower", "has_text_tower", "image_features", "model_fingerprint",
]


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
