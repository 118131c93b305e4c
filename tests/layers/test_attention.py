"""openeva.layers.attention.attention: SDPA semantics, with the explicit CPU path for short bf16 sequences."""

import pytest
import torch
import torch.nn.functional as F

from openeva.layers import attention as attn_mod
from openeva.layers.attention import attention


def _qkv(B=2, H=3, N=17, hd=16, dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, N, hd, generator=g).to(dtype).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_explicit_path_matches_sdpa_in_bf16(causal, grad):
    """Forward and gradients of the explicit bf16 path agree with PyTorch SDPA on the same inputs."""
    q, k, v = _qkv(dtype=torch.bfloat16, grad=grad)
    assert attn_mod._use_explicit(q, None, 0.0)  # the path under test is the explicit one
    ours = attention(q, k, v, is_causal=causal)
    ref_in = [t.detach().float().requires_grad_(grad) for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, is_causal=causal)
    assert ours.dtype == torch.bfloat16 and ours.shape == ref.shape
    torch.testing.assert_close(ours.float(), ref, rtol=0.03, atol=0.03)
    if grad:
        dout = torch.randn_like(ref)
        ours.backward(dout.to(torch.bfloat16))
        ref.backward(dout)
        for t, r in zip((q, k, v), ref_in):
            torch.testing.assert_close(t.grad.float(), r.grad, rtol=0.05, atol=0.05)


def test_causal_explicit_path_ignores_future_tokens():
    q, k, v = _qkv(N=6, dtype=torch.bfloat16)
    out = attention(q, k, v, is_causal=True)
    v2 = v.clone()
    v2[:, :, 3:] = 100.0  # changing tokens 3.. must not change outputs 0..2
    out2 = attention(q, k, v2, is_causal=True)
    assert torch.equal(out[:, :, :3], out2[:, :, :3])
    assert not torch.equal(out[:, :, 3:], out2[:, :, 3:])


def test_dispatch_rules():
    """Explicit only on CPU in bf16 without dropout or a boolean mask, up to the sequence-length limits."""
    short = _qkv(N=attn_mod.CPU_EXPLICIT_MAX_TOKENS, dtype=torch.bfloat16)[0]
    long = _qkv(N=attn_mod.CPU_EXPLICIT_MAX_TOKENS + 1, hd=4, dtype=torch.bfloat16)[0]
    assert attn_mod._use_explicit(short, None, 0.0)
    assert not attn_mod._use_explicit(long, None, 0.0)  # inference: SDPA beyond the limit
    assert attn_mod._use_explicit(long.requires_grad_(True), None, 0.0)  # training: explicit up to the train limit
    with torch.no_grad():
        assert not attn_mod._use_explicit(long, None, 0.0)
    fp32 = _qkv()[0]
    assert not attn_mod._use_explicit(fp32, None, 0.0)  # fp32 keeps SDPA (and its exact parity)
    assert not attn_mod._use_explicit(fp32.half(), None, 0.0)  # fp16 keeps SDPA (fp32 accumulation)
    assert not attn_mod._use_explicit(short, torch.zeros(1, dtype=torch.bool), 0.0)
    assert attn_mod._use_explicit(short, torch.zeros(1, 1, 1, short.shape[-2]), 0.0)  # additive: token merging
    assert not attn_mod._use_explicit(short, None, 0.1)


def test_fp32_is_sdpa_exactly():
    q, k, v = _qkv()
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_explicit_path_adds_a_float_mask_as_sdpa_does():
    q, k, v = _qkv(N=20, dtype=torch.bfloat16)
    bias = torch.randn(q.shape[0], 1, 1, 20)  # (B, 1, 1, N) per-key bias, fp32 (cast to q's dtype)
    assert attn_mod._use_explicit(q, bias, 0.0)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias)
    torch.testing.assert_close(attn_mod.attention(q, k, v, attn_mask=bias).float(), ref, rtol=3e-2, atol=3e-2)
