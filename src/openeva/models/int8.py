"""int8 inference: dynamic quantization of every Linear layer (weights int8, activations quantized per batch).

``torch.ao.quantization.quantize_dynamic`` swaps ``nn.Linear`` for a quantized Linear whose matmuls run in int8
(fbgemm on x86, with VNNI where the CPU has it). The EVA attention keeps its q/v biases outside the fused qkv
Linear (k has none); they are first folded into a plain biased Linear so that the qkv projection, the largest
matmul of a block, is quantized too. CPU only, inference only: the result has no gradients and its state dict
is not an openeva checkpoint.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from openeva.layers.attention import Attention


@torch.no_grad()
def _fold_qkv_biases(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, Attention) and m.q_bias is not None:
            fused = nn.Linear(m.qkv.in_features, m.qkv.out_features, bias=True, device=m.qkv.weight.device)
            fused.weight.copy_(m.qkv.weight)
            fused.bias.copy_(m.qkv_bias())  # (3D,): q bias, zeros for k, v bias
            m.qkv, m.q_bias, m.v_bias = fused, None, None


def quantize_int8(model: nn.Module) -> nn.Module:
    """An int8 copy-in-place of ``model`` for CPU inference (returns it, in eval mode).

    Raises a clear error for a model that is not on the CPU or not fp32 (dynamic quantization needs both).
    """
    params = list(model.parameters())
    if any(p.device.type != "cpu" for p in params):
        raise ValueError("int8 dynamic quantization runs on the CPU; build the model with device='cpu'")
    if any(p.dtype != torch.float32 for p in params if p.is_floating_point()):
        raise ValueError("int8 dynamic quantization starts from fp32 weights; build the model with precision='fp32'")
    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    model.eval().requires_grad_(False)
    _fold_qkv_biases(model)
    with warnings.catch_warnings():  # torch.ao eager quantization warns that it moves to torchao; it still works
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def is_int8(model: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(m, DynamicLinear) for m in model.modules())
