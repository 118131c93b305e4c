"""Fakes for evaluation tests: models whose answers are known by construction, and tiny image datasets.

Images are solid colours: an image of class k has red value ``10 + 20 * k``, so the fake CLIP image tower
maps it to the one-hot vector e_k; the fake text tower maps a text to e_k when it contains class name k.
"""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import torch
from PIL import Image

NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]


def red_value(k: int) -> int:
    return 10 + 20 * k


def solid_image(k: int, size: int = 8, jitter: int = 0, rng=None) -> Image.Image:
    """Class-k image; ``jitter`` adds per-image noise to green/blue (not red) so images differ."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[..., 0] = red_value(k)
    if jitter:
        rng = rng or np.random.default_rng(0)
        arr[..., 1:] = rng.integers(0, jitter, size=2, dtype=np.uint8)
    return Image.fromarray(arr)


def fake_tokenizer(texts):
    """Texts -> (N, 77) character codes (the fake text tower decodes them back)."""
    out = torch.zeros(len(texts), 77, dtype=torch.long)
    for i, t in enumerate(texts):
        codes = [ord(c) for c in t[:77]]
        out[i, : len(codes)] = torch.tensor(codes, dtype=torch.long)
    return out


class FakeCLIP(torch.nn.Module):
    """Image of class k -> e_k; text mentioning ``names[k]`` -> e_k (zero vector when none)."""

    def __init__(self, names=NAMES, dim: int | None = None):
        super().__init__()
        self.names = list(names)
        self.dim = dim or len(self.names)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.image_calls = 0
        self.text_calls = 0

    def class_of_images(self, images):  # (B, 3, H, W) -> (B,)
        red = images[:, 0].float().mean(dim=(1, 2)) * 255.0
        return torch.round((red - 10.0) / 20.0).long()

    def encode_image(self, images, normalize=False):
        self.image_calls += 1
        feats = torch.nn.functional.one_hot(self.class_of_images(images), self.dim).float() * self.scale
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens, normalize=False):
        self.text_calls += 1
        feats = torch.zeros(tokens.shape[0], self.dim)
        for i, row in enumerate(tokens.tolist()):
            text = "".join(chr(c) for c in row if c)
            for k, name in enumerate(self.names):
                if re.search(rf"\b{re.escape(name)}\b", text):
                    feats[i, k] = 1.0
                    break
        feats = feats * self.scale
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats


class FakeBackbone(torch.nn.Module):
    """A non-CLIP backbone with clustered features: [e_class, mean green, mean blue] (B, 8)."""

    def __init__(self, num_classes: int = len(NAMES)):
        super().__init__()
        self.num_classes = num_classes
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward_features(self, x):  # (B, 3, H, W) -> (B, H*W, 3) tokens
        self.calls += 1
        return x.flatten(2).transpose(1, 2)

    def forward_head(self, feats, pre_logits=False):
        mean = feats.mean(dim=1)  # (B, 3)
        cls = torch.round((mean[:, 0] * 255.0 - 10.0) / 20.0).long()
        onehot = torch.nn.functional.one_hot(cls, self.num_classes).float()  # (B, C)
        return torch.cat([onehot, mean[:, 1:]], dim=1) + self.bias  # (B, C + 2)


def idx_bytes(array: np.ndarray, type_code: int = 0x08, big_endian_dtype=">u1") -> bytes:
    """IDX as the MNIST page specifies: 0, 0, type, ndim, then big-endian uint32 dims, then data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian_dtype).tobytes()


def write_mnist_split(root, prefix, labels, gz=True):
    pixels = np.stack([np.full((28, 28), 10 + 20 * k, np.uint8) for k in labels])
    suffix = ".gz" if gz else ""
    for kind, arr in (("images-idx3", pixels), ("labels-idx1", np.array(labels, np.uint8))):
        data = idx_bytes(arr)
        (root / f"{prefix}-{kind}-ubyte{suffix}").write_bytes(gzip.compress(data) if gz else data)
