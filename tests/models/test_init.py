"""Initialisation of a fresh EVA-02 against EVA's rule, matrix by matrix (EVA-02 ``modeling_pretrain.py``, jax_init).

EVA initialises every Linear Xavier-normal, std sqrt(2 / (fan_in + fan_out)), on the matrices its modules have:
EVA-02 B/L (sub-LN) have separate q/k/v projections and SwiGLU w1/w2, so each D x D projection starts at
1/sqrt(D) (0.0361 for B, not the 0.0255 of Xavier on the fused 3D x D ``qkv``); Ti/S have a fused ``qkv`` and a
packed ``w12`` in EVA too. Sub-LN models then multiply w1/w2/w3, ``attn.proj`` and the v projection by
sqrt(ln(2 * depth)). Tokens are trunc-normal(0.02) cut at one std; EVA-CLIP's new vision head is
trunc-normal(0.02) x 0.001.
"""

from __future__ import annotations

import math

import pytest
import torch

from openeva.models.mim import MIMStudent
from openeva.models.registry import get_model_spec
from openeva.models.vit import EVAViT

# a normal cut at +-1 std keeps this fraction of the std: sqrt(1 - 2 phi(1) / (Phi(1) - Phi(-1)))
ONE_STD_TRUNCATION = math.sqrt(1 - 2 * math.exp(-0.5) / math.sqrt(2 * math.pi) / math.erf(1 / math.sqrt(2)))


def _xavier(fan_out: int, fan_in: int) -> float:
    return math.sqrt(2.0 / (fan_in + fan_out))


def _assert_std(t: torch.Tensor, want: float, name: str, rel: float = 0.02) -> None:
    assert t.float().std().item() == pytest.approx(want, rel=rel), name
    assert abs(t.float().mean().item()) < 4 * want / math.sqrt(t.numel()), name  # centred


@pytest.fixture(scope="module")
def eva02_base():
    torch.manual_seed(0)
    cfg = get_model_spec("eva02_base_patch14_224").config
    return EVAViT(cfg.replace(mask_token=True))


def test_eva02_base_every_matrix_starts_as_in_eva(eva02_base):
    vit, D, H = eva02_base, 768, 2048
    assert vit.cfg.mlp_norm and vit.cfg.depth == 12
    s = math.sqrt(math.log(2 * 12))  # sub-LN residual scale, 1.7827
    assert 1 / math.sqrt(D) == pytest.approx(0.0361, abs=5e-5)
    for i, blk in enumerate(vit.blocks):
        q, k, v = blk.attn.qkv.weight.chunk(3)  # (D, D) each
        _assert_std(q, 1 / math.sqrt(D), f"blocks.{i}.q")
        _assert_std(k, 1 / math.sqrt(D), f"blocks.{i}.k")
        _assert_std(v, s / math.sqrt(D), f"blocks.{i}.v")
        gate, value = blk.mlp.fc1.weight.chunk(2)  # (H, D) each: EVA's w1, w2
        _assert_std(gate, s * _xavier(H, D), f"blocks.{i}.w1")
        _assert_std(value, s * _xavier(H, D), f"blocks.{i}.w2")
        _assert_std(blk.mlp.fc2.weight, s * _xavier(D, H), f"blocks.{i}.w3")
        _assert_std(blk.attn.proj.weight, s * _xavier(D, D), f"blocks.{i}.proj")
        for name in ("attn.q_bias", "attn.v_bias", "attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias", "norm1.bias",
                     "norm2.bias", "mlp.norm.bias"):
            assert not blk.get_parameter(name).any(), f"blocks.{i}.{name}"
        for name in ("norm1.weight", "norm2.weight", "mlp.norm.weight"):
            assert (blk.get_parameter(name) == 1).all(), f"blocks.{i}.{name}"
    w = vit.patch_embed.proj.weight  # Xavier-uniform on (D, 3 * 14 * 14)
    _assert_std(w, _xavier(D, 3 * 14 * 14), "patch_embed")
    assert w.abs().max() <= math.sqrt(6 / (D + 3 * 14 * 14))
    for name in ("cls_token", "mask_token", "pos_embed"):
        t = getattr(vit, name)
        assert t.abs().max() <= 0.02, name  # cut at one std
        if t.numel() > 10_000:
            _assert_std(t, 0.02 * ONE_STD_TRUNCATION, name, rel=0.05)


def test_eva02_tiny_fused_matrices_are_initialised_whole_as_in_eva():
    """Ti/S keep EVA's fused qkv (3D x D) and packed w12 (2H x D), which EVA initialises as one matrix."""
    torch.manual_seed(0)
    vit = EVAViT(get_model_spec("eva02_tiny_patch14_224").config)
    D, H = 192, 512
    assert not vit.cfg.mlp_norm
    blk = vit.blocks[0]
    for part in blk.attn.qkv.weight.chunk(3):
        _assert_std(part, _xavier(3 * D, D), "qkv", rel=0.05)
    for part in blk.mlp.fc1.weight.chunk(2):
        _assert_std(part, _xavier(2 * H, D), "w12", rel=0.05)
    _assert_std(blk.mlp.fc2.weight, _xavier(D, H), "w3", rel=0.05)


def test_clip_vision_head_and_mim_lm_head():
    torch.manual_seed(0)
    clip_vision = get_model_spec("EVA02-B-16").config.vision.replace(depth=1)  # the head alone matters here
    head = EVAViT(clip_vision).head  # (512, 768)
    _assert_std(head.weight, 0.02 * 1e-3, "visual.head", rel=0.05)
    assert not head.bias.any()
    student = MIMStudent(get_model_spec("eva02_tiny_patch14_224").config, target_dim=1024)
    _assert_std(student.lm_head.weight, _xavier(1024, 192), "lm_head", rel=0.05)
    assert not student.lm_head.bias.any()
