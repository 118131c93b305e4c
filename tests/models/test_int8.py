"""int8 dynamic quantization: every Linear quantized (the fused qkv too), outputs close to fp32, clear errors."""

import copy

import pytest
import torch
import torch.nn.functional as F

import openeva
from openeva.models.int8 import is_int8, quantize_int8


def test_int8_clip_is_close_to_fp32():
    torch.manual_seed(0)
    fp32 = openeva.create_model("EVA02-test").eval()
    q = quantize_int8(copy.deepcopy(fp32))
    assert is_int8(q) and not is_int8(fp32)
    assert not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in q.modules())
    images, text = torch.randn(4, 3, 32, 32), torch.randint(1, 400, (4, 77))
    with torch.no_grad():
        assert F.cosine_similarity(q.encode_image(images), fp32.encode_image(images)).min() > 0.95
        assert F.cosine_similarity(q.encode_text(text), fp32.encode_text(text)).min() > 0.95


def test_int8_with_token_merging_via_create_model():
    model = openeva.create_model("EVA02-test", tome_r=2, int8=True)
    with torch.no_grad():
        out = model.encode_image(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 32) and torch.isfinite(out).all()


def test_int8_refuses_non_fp32():
    with pytest.raises(ValueError, match="fp32"):
        quantize_int8(openeva.create_model("EVA02-test", precision="bf16"))
