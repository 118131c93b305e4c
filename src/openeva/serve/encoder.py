"""The one way serve/ reaches a model: an :class:`Encoder` (preprocess, encode_images, encode_texts).

Embedding, indexing, search, classification and the HTTP service only call this interface, so another
runtime (an ONNX session, say) plugs in by implementing the same five members. :class:`TorchClipEncoder`
is the PyTorch implementation over any openeva CLIP model (registered name or checkpoint directory).

Precision: :data:`DEFAULT_PRECISION` is the single place serve/ chooses it (fp32 until the hardware-aware
``"auto"`` resolver lands; then resolve it here).
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

import numpy as np
import torch
from PIL import Image

DEFAULT_PRECISION = "fp32"  # the one precision switch of serve/; becomes "auto" (hardware resolver) at merge


class Encoder(Protocol):
    """What serve/ needs of a model. Outputs are L2-normalised float32 arrays of shape (N, dim)."""

    dim: int
    info: dict  # model name, config hash, weights hash, preprocessing: written into manifests

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...  # (3, H, W)

    def encode_images(self, images: torch.Tensor) -> np.ndarray: ...  # (B, 3, H, W) -> (B, dim)

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...  # N strings -> (N, dim)


def _hash_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class TorchClipEncoder:
    """An openeva CLIP model in eval mode, with its own preprocessing and tokenizer."""

    def __init__(self, model_name: str, pretrained: str | None = None, precision: str = DEFAULT_PRECISION,
                 device: str = "cpu", model: torch.nn.Module | None = None):
        from openeva.factory import (
            create_model,
            get_tokenizer,
            image_transforms,
            model_config_dict,
        )
        from openeva.models.clip import CLIP

        self.model = model if model is not None else create_model(model_name, pretrained, precision=precision,
                                                                  device=device)
        if not isinstance(self.model, CLIP):
            raise ValueError(f"{model_name} is not a CLIP model (image + text towers); embed/search/classify "
                             "need one (see `openeva models`)")
        self.model.eval()
        self.device = torch.device(device)
        self.dtype = next(self.model.parameters()).dtype
        self.tokenizer = get_tokenizer(model_name if model is None else None,
                                       context_length=self.model.context_length)
        _, self._transform = image_transforms(self.model)
        saved = model_config_dict(self.model)
        self.dim = int(self.model.cfg.embed_dim)
        self.info = json.loads(json.dumps({
            "model": model_name, "pretrained": pretrained, "config_hash": _hash_json(saved["model_config"]),
            "weights_hash": _weights_hash(self.model), "preprocess": saved["preprocess"], "dim": self.dim,
            "normalized": True, "precision": str(self.dtype).replace("torch.", ""),
        }))  # JSON-normal form (lists, not tuples), as manifests store it

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)  # (3, H, W)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> np.ndarray:
        x = images.to(self.device, self.dtype)  # (B, 3, H, W)
        return self.model.encode_image(x, normalize=True).float().cpu().numpy()  # (B, D)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)  # (N, L)
        return self.model.encode_text(tokens, normalize=True).float().cpu().numpy()  # (N, D)


def load_encoder(model: str, pretrained: str | None = None, device: str = "cpu") -> Encoder:
    """The encoder for a registered CLIP name or an openeva checkpoint directory."""
    return TorchClipEncoder(model, pretrained, device=device)
