"""ONNX export of every openeva model: image and text towers as separate graphs, checked against PyTorch.

Every tower family exports through the model's own ``encode_image`` / ``encode_text`` (EVA-02 with RoPE, plain
ViTs, SigLIP's attention pooling, timm backbones, Hugging Face text towers); a model in a state that has no
static graph (int8, token merging, bf16) is refused with what to do instead (:func:`onnx_refusal`).

Each tower is its own graph so a service can load only what it needs: ``image.onnx`` takes ``pixel_values``
(B, 3, H, W) float32 and returns ``image_embeds`` (B, E), unnormalised; ``text.onnx`` takes ``input_ids``
(B, L) **int32** (token ids fit easily, and int32 keeps ArgMax and Gather on kernels every runtime has) and
returns ``text_embeds`` (B, E). The batch dimension is dynamic; opset 17 by default. ``manifest.json`` records
the model, its preprocessing, the tokenizer's context length and the parity check against PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch import nn

DEFAULT_OPSET = 17
REL_TOLERANCE = 1e-4  # max |onnx - torch| / max |torch| in fp32


def weights_hash(model: nn.Module) -> str:
    """Short hash of a model's weights as fp32 (names and values): the identity of the vectors it makes.

    Taken before any cast, token merging or quantization, and written into an export's manifest, so vectors
    from the PyTorch model and from its ONNX export are known to come from the same weights. A quantized model
    (whose state dict holds packed params and dtypes) is refused: hash the model before quantizing it."""
    from openeva.models.int8 import is_int8

    if is_int8(model):
        raise ValueError("weights_hash needs the fp32 model: take it before quantize_int8 (int8 weights are "
                         "packed and no longer name the fp32 weights the vectors come from)")
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def config_hash(model_config: dict) -> str:
    """Short hash of a model's saved config (``model_config_dict(model)["model_config"]``)."""
    return hashlib.sha256(json.dumps(model_config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ImageTower(nn.Module):
    """images (B, 3, H, W) -> embeddings (B, E): a CLIP's ``encode_image`` or a backbone's forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "encode_image"):
            return self.model.encode_image(pixel_values)
        return self.model(pixel_values)


class TextTower(nn.Module):
    """int32 token ids (B, L) -> embeddings (B, E) through the model's own ``encode_text``, whatever its text
    tower (openeva's CLIP text transformer, SigLIP's, a Hugging Face one): the ids stay int32 into the graph, so
    the EOT ArgMax of CLIP towers and the embedding Gather run on int32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)


def text_vocab_size(model: nn.Module) -> int:
    """The text tower's vocabulary size (openeva's ``vocab_size``, or a Hugging Face model's config)."""
    text = model.text
    for owner in (text, getattr(text, "transformer", None), getattr(text, "config", None),
                  getattr(getattr(text, "transformer", None), "config", None)):
        size = getattr(owner, "vocab_size", None)
        if isinstance(size, int) and size > 0:
            return size
    raise ValueError(f"cannot tell the vocabulary size of the text tower {type(text).__name__}")


def onnx_refusal(model: nn.Module) -> str | None:
    """Why ``model``'s structure cannot be exported, or None (its dtype and device are checked by
    :func:`export_onnx`, so this also answers for a model built on the meta device). Every tower family exports
    (EVA-02, plain ViTs, SigLIP, timm backbones, Hugging Face text towers); what is refused is a state that has
    no static fp32 graph: int8 or token merging. The message says what to do instead."""
    from openeva.models.int8 import is_int8
    from openeva.models.tome import is_merging

    if is_int8(model):
        return ("export the model without int8 quantization (the ONNX graphs are fp32; ONNX Runtime optimises "
                "them itself)")
    if is_merging(model):
        return "export the model without token merging (its data-dependent merges are not a static graph)"
    return None


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str,
            opset: int) -> None:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=opset, dynamo=False)


def _check(path: Path, module: nn.Module, inputs: torch.Tensor, input_name: str) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = module(inputs).float()
    got = torch.from_numpy(sess.run(None, {input_name: inputs.numpy()})[0])
    diff = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    return {"batch": int(inputs.shape[0]), "max_abs_diff": diff, "max_rel_diff": diff / max(scale, 1e-12),
            "ok": diff <= REL_TOLERANCE * max(scale, 1e-12)}


def export_onnx(model: nn.Module, out_dir: str | Path, opset: int = DEFAULT_OPSET, check: bool = True,
                model_name: str | None = None, pretrained: str | None = None) -> dict:
    """Writes ``image.onnx`` (+ ``text.onnx`` for CLIP models) and ``manifest.json`` into ``out_dir``.

    The model must be fp32 on the CPU, without token merging or int8 (export the plain model; ORT optimises
    it). With ``check``, both graphs run in onnxruntime at two batch sizes and must match PyTorch within
    ``REL_TOLERANCE``; a mismatch raises ``ValueError`` after the manifest is written.
    """
    from openeva.factory import model_config_dict, preprocess_cfg

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    why = onnx_refusal(model)
    if why is not None:
        raise ValueError(why)
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("export an fp32 model on the CPU (create_model(..., precision='fp32', device='cpu'))")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    H, W = preprocess_cfg(model)["size"]  # the tower's input size, whatever its family
    manifest = {"model": model_name or getattr(getattr(model, "spec", None), "name", None), "pretrained": pretrained,
                "opset": opset, "image_size": [H, W], "preprocess": preprocess_cfg(model), "graphs": {},
                "config_hash": config_hash(model_config_dict(model)["model_config"]),
                "weights_hash": weights_hash(model)}
    g = torch.Generator().manual_seed(0)
    image_tower = ImageTower(model).eval()
    start = time.perf_counter()
    _export(image_tower, torch.randn(2, 3, H, W, generator=g), out / "image.onnx", "pixel_values", "image_embeds",
            opset)
    manifest["graphs"]["image"] = {"file": "image.onnx", "input": "pixel_values", "input_dtype": "float32",
                                   "output": "image_embeds", "export_s": time.perf_counter() - start}
    if hasattr(model, "encode_text"):
        L = model.context_length
        text_tower = TextTower(model).eval()
        example = torch.randint(1, min(400, text_vocab_size(model) - 1), (2, L), generator=g, dtype=torch.int32)
        start = time.perf_counter()
        _export(text_tower, example, out / "text.onnx", "input_ids", "text_embeds", opset)
        manifest["graphs"]["text"] = {"file": "text.onnx", "input": "input_ids", "input_dtype": "int32",
                                      "output": "text_embeds", "context_length": L,
                                      "export_s": time.perf_counter() - start}
    if check:
        checks = {"image": [_check(out / "image.onnx", image_tower, torch.randn(b, 3, H, W, generator=g),
                                   "pixel_values") for b in (1, 3)]}
        if "text" in manifest["graphs"]:
            vocab = text_vocab_size(model)
            ids = [torch.randint(1, vocab - 1, (b, L), generator=g, dtype=torch.int32) for b in (1, 3)]
            for t in ids:
                t[:, -1] = vocab - 1  # an EOT token (the largest id), as the tokenizer ends a text
            checks["text"] = [_check(out / "text.onnx", TextTower(model).eval(), t, "input_ids") for t in ids]
        manifest["parity"] = checks
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    bad = [f"{k} (batch {c['batch']}: rel {c['max_rel_diff']:.2e})" for k, cs in manifest.get("parity", {}).items()
           for c in cs if not c["ok"]]
    if bad:
        raise ValueError(f"onnxruntime disagrees with PyTorch beyond {REL_TOLERANCE:g} relative: {', '.join(bad)}")
    return manifest
