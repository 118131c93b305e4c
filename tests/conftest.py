"""Shared fixtures for the model and checkpoint tests: random weights, and timm builds of the tiny test models.

Fixtures return plain functions (``randomize(model)``, ``timm_twin(name)``) because test modules run in
importlib mode and cannot import helpers from each other.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

# Under pytest-xdist each worker gets its share of the cores: N workers x all-cores threads oversubscribe the
# CPU, and OpenMP's spin-waits then slow small-op tests (tiny models trained in a fixture) by 10-20x.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))  # subprocesses the tests start inherit it
    torch.set_num_threads(_THREADS)


@torch.no_grad()
def randomize_params(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random at a scale that keeps activations O(1).

    Library inits leave biases at 0 and norms at 1 (and timm shrinks its head by 1e-3); a parity test on such
    weights cannot see a swapped q/v bias or a misplaced sub-LN, so every tensor gets its own random values.
    """
    g = torch.Generator().manual_seed(seed)
    norm_weights = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if name in norm_weights:
            value = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        elif p.ndim >= 2 and leaf not in ("cls_token", "pos_embed", "mask_token", "positional_embedding"):
            fan_in = p.shape[0] if leaf == "text_projection" else p[0].numel()  # x @ P: fan-in is dim 0
            value = torch.randn(p.shape, generator=g) / fan_in ** 0.5
        elif leaf == "logit_scale":
            value = torch.tensor(2.0)
        else:  # biases, q/v biases, tokens, position embeddings
            value = 0.1 * torch.randn(p.shape, generator=g)
        p.copy_(value.to(p.dtype))
    return model


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


# timm ``Eva`` kwargs that build the same network as each tiny registered test model (key names differ only).
TIMM_TWINS = {
    "eva02_test_patch8_32": dict(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, qkv_fused=False,
        swiglu_mlp=True, scale_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4), num_classes=0),
    "eva02_test_packed_patch8_32": dict(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0,
        swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4), num_classes=0),
    "EVA02-test": dict(  # the CLIP vision tower (sub-LN in attention and MLP, CLS pooling, projection head)
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, qkv_fused=False,
        swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
        global_pool="token", num_classes=32),
    "EVA02-E-test": dict(  # post-norm GELU tower like EVA02-E
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0, use_post_norm=True,
        global_pool="token", num_classes=32),
}


def build_timm_twin(name: str, seed: int = 0, **overrides) -> nn.Module:
    """timm's ``Eva`` equivalent of a tiny test model (or its vision tower), with random weights, in eval mode."""
    from timm.models.eva import Eva

    torch.manual_seed(seed)
    return randomize_params(Eva(**{**TIMM_TWINS[name], **overrides}), seed).eval()


@pytest.fixture(scope="session")
def randomize():
    return randomize_params


@pytest.fixture(scope="session")
def timm_twin():
    pytest.importorskip("timm")
    return build_timm_twin


@pytest.fixture(scope="session")
def relative_difference():
    return rel_diff
