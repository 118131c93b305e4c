"""The one way serve/ reaches a model: an :class:`Encoder` (preprocess, encode_images, encode_texts).

Embedding, indexing, search, classification and the HTTP service only call this interface, so another
runtime plugs in by implementing the same five members. :class:`TorchClipEncoder` is the PyTorch
implementation over any openeva CLIP model (registered name or checkpoint directory), with the inference
options of ``create_model`` (token merging, int8); :class:`OnnxClipEncoder` runs a folder written by
``openeva export onnx`` on ONNX Runtime. :func:`load_encoder` picks one from what ``model`` names.

Precision: :data:`DEFAULT_PRECISION` ("auto") is resolved by :func:`openeva.runtime.resolve_precision`: bf16
only where the device runs it natively, else fp32. ``info["weights_hash"]`` is taken over the fp32 weights
before any cast, merge or quantization (and recorded by the ONNX export the same way), so vectors of one
model made by either runtime can share an index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from openeva.export.onnx import config_hash, weights_hash
from openeva.runtime import dtype_of, resolve_device, resolve_precision

DEFAULT_PRECISION = "auto"  # the one precision switch of serve/


class Encoder(Protocol):
    """What serve/ needs of a model. Outputs are L2-normalised float32 arrays of shape (N, dim)."""

    dim: int
    info: dict  # model name, config hash, weights hash, preprocessing: written into manifests

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...  # (3, H, W)

    def encode_images(self, images: torch.Tensor) -> np.ndarray: ...  # (B, 3, H, W) -> (B, dim)

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...  # N strings -> (N, dim)


class TorchClipEncoder:
    """An openeva CLIP model in eval mode, with its own preprocessing and tokenizer.

    ``precision`` "auto" resolves by the hardware (said in ``precision_reason``); ``tome_r`` merges that many
    image tokens per block, ``int8`` quantizes the Linear layers (CPU, fp32 around them).
    """

    def __init__(self, model_name: str, pretrained: str | None = None, precision: str = DEFAULT_PRECISION,
                 device: str = "cpu", model: torch.nn.Module | None = None, tome_r: int | None = None,
                 int8: bool = False):
        from openeva.factory import create_model, get_tokenizer, image_transforms, model_config_dict
        from openeva.models.clip import CLIP
        from openeva.models.int8 import quantize_int8
        from openeva.models.tome import apply_tome

        if tome_r is not None and (isinstance(tome_r, bool) or not isinstance(tome_r, int) or tome_r < 0):
            raise ValueError(f"tome_r must be an int >= 0, got {tome_r!r}")
        if int8 and torch.device(device).type != "cpu":
            raise ValueError("int8 runs on the CPU; use device='cpu' or drop int8")
        resolved, self.precision_reason = resolve_precision(precision, device, int8=bool(int8))
        self.model = model if model is not None else create_model(model_name, pretrained, device=device)
        if not isinstance(self.model, CLIP):
            raise ValueError(f"{model_name} is not a CLIP model (image + text towers); embed/search/classify "
                             "need one (see `openeva models`)")
        weights = weights_hash(self.model)  # before any cast, merge or quantization
        if model is None and resolved != "fp32":
            self.model = self.model.to(dtype_of(resolved))
        if tome_r:
            apply_tome(self.model, tome_r)
        if int8:
            quantize_int8(self.model)
        self.model.eval()
        self.device = torch.device(device)
        self.dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())
        self.tokenizer = get_tokenizer(model_name if model is None else None,
                                       context_length=self.model.context_length)
        _, self._transform = image_transforms(self.model)
        saved = model_config_dict(self.model)
        self.dim = int(self.model.cfg.embed_dim)
        self.info = json.loads(json.dumps({
            "model": model_name, "pretrained": pretrained, "config_hash": config_hash(saved["model_config"]),
            "weights_hash": weights, "preprocess": saved["preprocess"], "dim": self.dim,
            "normalized": True, "precision": str(self.dtype).replace("torch.", ""), "tome_r": tome_r or 0,
            "int8": bool(int8), "runtime": "torch",
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


class OnnxClipEncoder:
    """A folder written by ``openeva export onnx`` (image + text graphs) on ONNX Runtime's CPU provider."""

    def __init__(self, export_dir, threads: int | None = None):
        from openeva.data.transforms import PreprocessConfig, image_transform
        from openeva.export.runtime import OnnxClip
        from openeva.factory import get_tokenizer

        self.runtime = OnnxClip(export_dir, threads=threads)
        manifest = self.runtime.manifest
        if not self.runtime.has_text:
            raise ValueError(f"{export_dir} holds an image backbone only; embed/search/classify need a CLIP export")
        self.tokenizer = get_tokenizer(context_length=self.runtime.context_length)
        self._transform = image_transform(PreprocessConfig.from_dict(manifest["preprocess"]), is_train=False)
        H, W = manifest["image_size"]
        self.dim = int(self.runtime.encode_image(np.zeros((1, 3, H, W), np.float32)).shape[-1])
        self.info = json.loads(json.dumps({
            "model": manifest.get("model"), "pretrained": manifest.get("pretrained"),
            "config_hash": manifest.get("config_hash"), "weights_hash": manifest.get("weights_hash"),
            "preprocess": manifest["preprocess"], "dim": self.dim, "normalized": True, "precision": "float32",
            "tome_r": 0, "int8": False, "runtime": "onnxruntime",
        }))
        self.precision_reason = "ONNX Runtime graphs are fp32"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)  # (3, H, W)

    def encode_images(self, images: torch.Tensor) -> np.ndarray:
        return self.runtime.encode_image(images.float(), normalize=True).numpy()  # (B, 3, H, W) -> (B, D)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.runtime.encode_text(self.tokenizer(list(texts)), normalize=True).numpy()  # (N, D)


def is_onnx_export(model) -> bool:
    """Whether ``model`` names a folder written by ``openeva export onnx``."""
    manifest = Path(str(model)) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return "graphs" in json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False


def _checked_device(device) -> str:
    """``device`` as a string torch accepts, or a ValueError that says what is (not a RuntimeError from deep in
    torch, or a CUDA error when the model is first moved)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device!r}: no such CUDA device here ({torch.cuda.device_count()} visible); "
                         "use --device cpu or auto")
    return str(dev)


def load_encoder(model: str, pretrained: str | None = None, device: str = "cpu", *,
                 precision: str = DEFAULT_PRECISION, tome_r: int | None = None, int8: bool = False,
                 log=None) -> Encoder:
    """The encoder for a registered CLIP name, an openeva checkpoint directory or an ONNX export folder.

    ``device`` "auto" is this process's CUDA GPU when there is one (``LOCAL_RANK`` under torchrun), else the CPU;
    int8 and ONNX exports run on the CPU. ``log`` (e.g. ``print``) receives one line saying the runtime, device
    and precision chosen, and why.
    """
    onnx = is_onnx_export(model)
    if str(device) == "auto":
        device = "cpu" if onnx or int8 else str(resolve_device("auto", int(os.environ.get("LOCAL_RANK", "0"))))
    device = _checked_device(device)
    if onnx:
        if pretrained or tome_r or int8 or str(device) != "cpu":
            raise ValueError(f"{model} is an ONNX export: --pretrained, --tome-r, --int8 and --device do not "
                             "apply to it (export the model you want, then serve the export)")
        encoder: Encoder = OnnxClipEncoder(model)
    else:
        encoder = TorchClipEncoder(model, pretrained, precision=precision, device=device, tome_r=tome_r, int8=int8)
    if log is not None:
        info = encoder.info
        extra = f", token merging r={info['tome_r']}" * bool(info["tome_r"]) + ", int8" * info["int8"]
        log(f"encoder {info['runtime']} on {device}: {info['precision']} ({encoder.precision_reason}){extra}")
    return encoder
