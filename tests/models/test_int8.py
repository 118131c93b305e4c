"""int8 dynamic quantization: every Linear quantized (the fused qkv and the text in_proj too) in every tower family
(EVA-02, plain ViT, SigLIP, timm, Hugging Face text), outputs close to fp32, clear errors."""

import copy

import pytest
import torch
import torch.nn.functional as F

import openeva
from openeva.models.int8 import int8_refusal, is_int8, quantize_int8
from openeva.models.text import CausalSelfAttention


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


# ------------------------------------------------------------------------------- every Linear-based tower
@pytest.mark.parametrize("family", ["eva", "vit", "siglip", "timm", "hf"])
def test_int8_every_tower_family(family):
    """EVA-02, plain ViT, SigLIP (map pool, bidirectional text), a timm ConvNeXt tower and a Hugging Face text
    tower: every nn.Linear swapped for its int8 form, both towers close to fp32."""
    from tiny_towers import image_size, text_ids, tiny_clip

    fp32 = tiny_clip(family)
    linears = sum(type(m) is torch.nn.Linear for m in fp32.modules())
    q = quantize_int8(copy.deepcopy(fp32))
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())  # none left in fp32
    extra = sum(isinstance(m, CausalSelfAttention) for m in fp32.modules())  # text in_proj became a Linear
    assert sum(isinstance(m, DynamicLinear) for m in q.modules()) == linears + extra
    images, ids = torch.randn(3, 3, *image_size(fp32)), text_ids(fp32, 3)
    with torch.no_grad():
        assert F.cosine_similarity(q.encode_image(images), fp32.encode_image(images)).min() > 0.98
        assert F.cosine_similarity(q.encode_text(ids), fp32.encode_text(ids)).min() > 0.98


@pytest.mark.parametrize("causal", [True, False])
def test_text_in_proj_rewrite_is_exact_before_quantizing(causal):
    """The packed text in_proj becomes a Linear with the same output, causal (CLIP) or not (SigLIP)."""
    from openeva.models.int8 import _text_in_proj_to_linear

    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 2, causal=causal)
    torch.nn.init.normal_(attn.in_proj_weight)
    torch.nn.init.normal_(attn.in_proj_bias)
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        ref = attn(x)
        _text_in_proj_to_linear(attn)
        assert isinstance(attn.in_proj, torch.nn.Linear) and not hasattr(attn, "in_proj_weight")
        torch.testing.assert_close(attn(x), ref, rtol=0, atol=1e-6)


def test_int8_refuses_a_model_without_linear_layers_naming_it():
    timm = pytest.importorskip("timm")
    cnn = timm.create_model("test_resnet", num_classes=0)  # convolutions only, no classifier
    assert int8_refusal(cnn) is not None
    with pytest.raises(ValueError, match=r"timm's test_resnet \(ResNet\) has none"):
        quantize_int8(cnn)
    assert int8_refusal(openeva.create_model("convnext-test")) is None
