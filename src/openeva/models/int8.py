"""int8 inference: dynamic quantization of every Linear layer (weights int8, activations quantized per batch).

``torch.ao.quantization.quantize_dynamic`` swaps ``nn.Linear`` for a quantized Linear whose matmuls run in int8
(fbgemm on x86, with VNNI where the CPU has it). It works on any tower built from Linear layers: EVA-02 and plain
ViTs, the CLIP text tower, Hugging Face text towers, and timm backbones whose blocks use Linear MLPs or
attention (ConvNeXt's MLPs, Swin, VOLO, FocalNet, GC ViT, Next-ViT's attention, ViTamin); convolutions stay fp32.
A model with no Linear layer at all is refused (:func:`int8_refusal`): there would be nothing to quantize.

Two layouts keep their largest matmul outside an ``nn.Linear`` and are first rewritten into one, so that it is
quantized too: the EVA attention's q/v biases (k has none) are folded into a plain biased ``qkv`` Linear, and the
CLIP text attention's ``in_proj_weight`` / ``in_proj_bias`` become an ``in_proj`` Linear. CPU only, inference
only: the result has no gradients and its state dict is not an openeva checkpoint.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from openeva.layers.attention import Attention, attention
from openeva.models.families import family_name
from openeva.models.text import CausalSelfAttention


@torch.no_grad()
def _fold_qkv_biases(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, Attention) and m.q_bias is not None:
            fused = nn.Linear(m.qkv.in_features, m.qkv.out_features, bias=True, device=m.qkv.weight.device)
            fused.weight.copy_(m.qkv.weight)
            fused.bias.copy_(m.qkv_bias())  # (3D,): q bias, zeros for k, v bias
            m.qkv, m.q_bias, m.v_bias = fused, None, None


@torch.no_grad()
def _text_in_proj_to_linear(model: nn.Module) -> None:
    """CLIP text attention: its packed (3W, W) input projection as an ``in_proj`` Linear (quantized with the rest)."""
    for m in model.modules():
        if isinstance(m, CausalSelfAttention) and isinstance(getattr(m, "in_proj_weight", None), nn.Parameter):
            w, b = m.in_proj_weight, m.in_proj_bias
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device)
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b)
            del m.in_proj_weight, m.in_proj_bias
            m.in_proj = lin
            m.__class__ = _Int8CausalSelfAttention


class _Int8CausalSelfAttention(CausalSelfAttention):
    """The text attention with its input projection as the ``in_proj`` module (quantizable); the rest as
    :class:`~openeva.models.text.CausalSelfAttention` (the int8 tests compare the two)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.in_proj(x)  # (B, L, 3D)
        q, k, v = qkv.view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, hd) each
        x = attention(q, k, v, is_causal=self.causal)  # (B, H, L, hd): SigLIP's text attends both ways
        return self.out_proj(x.transpose(1, 2).reshape(B, L, D))


def int8_refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot be quantized to int8, or None when it can (it has Linear layers)."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        return (f"int8 dynamic quantization converts Linear layers, and {family_name(model)} has none (a purely "
                f"convolutional network); run it in fp32 or bf16")
    return None


def quantize_int8(model: nn.Module) -> nn.Module:
    """An int8 copy-in-place of ``model`` for CPU inference (returns it, in eval mode).

    Raises a clear error for a model that is not on the CPU or not fp32 (dynamic quantization needs both), or
    that has no Linear layer.
    """
    params = list(model.parameters())
    if any(p.device.type != "cpu" for p in params):
        raise ValueError("int8 dynamic quantization runs on the CPU; build the model with device='cpu'")
    if any(p.dtype != torch.float32 for p in params if p.is_floating_point()):
        raise ValueError("int8 dynamic quantization starts from fp32 weights; build the model with precision='fp32'")
    why = int8_refusal(model)
    if why is not None:
        raise ValueError(why)
    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    model.eval().requires_grad_(False)
    _fold_qkv_biases(model)
    _text_in_proj_to_linear(model)
    with warnings.catch_warnings():  # torch.ao eager quantization warns that it moves to torchao; it still works
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def is_int8(model: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(m, DynamicLinear) for m in model.modules())
