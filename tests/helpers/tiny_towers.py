"""One tiny CLIP model per tower family, for the tests of the inference options (ToMe, int8, ONNX, ``models``).

Each is built by openeva's own classes from the same config helpers as its registered full-size rows, with a
``spec`` attached as the factory attaches one (preprocessing, name), and every weight redrawn at O(1) scale so
that zero biases and unit norms cannot hide a difference:

- ``eva``: EVA-02 (RoPE, SwiGLU, sub-LN, class token; the registered ``EVA02-test``)
- ``vit``: open_clip's OpenAI-style ViT (class token, learned positions, ``norm_pre``, QuickGELU, no RoPE)
- ``siglip``: SigLIP (no class token, 'map' attention pooling, bidirectional text pooled at the last token)
- ``timm``: a timm ConvNeXt tower (the registered ``convnext-test``)
- ``hf``: a Hugging Face XLM-RoBERTa text tower (with the EVA-02 image tower)
"""

from __future__ import annotations

import math

import torch
from torch import nn

FAMILIES = ("eva", "vit", "siglip", "timm", "hf")


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("logit_scale", "logit_bias")):
            continue
        if p.ndim >= 2:
            fan_in = p.shape[0] if name.endswith("text_projection") else p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
        elif name.endswith("weight"):  # norms
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _clip(name: str, cfg, **spec_kw) -> nn.Module:
    from openeva.models.clip import CLIP
    from openeva.models.registry import ModelSpec

    model = CLIP(cfg)
    model.spec = ModelSpec(name=name, config=cfg, **spec_kw)
    return model


def hf_text_config(embed: int = 32):
    from openeva.models.hf_text import HFTextConfig

    return HFTextConfig(hf_config={"model_type": "xlm-roberta", "vocab_size": 300, "hidden_size": 32,
                                   "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                                   "max_position_embeddings": 40, "pad_token_id": 1, "bos_token_id": 0,
                                   "eos_token_id": 2, "type_vocab_size": 1},
                        embed_dim=embed, pooler="mean_pooler", proj="mlp", context_length=16)


def tiny_clip(family: str, seed: int = 0) -> nn.Module:
    """The family's tiny CLIP model in eval mode, fp32, random O(1) weights; 32 px images (64 px for timm)."""
    import openeva

    from openeva.models.clip import CLIPConfig
    from openeva.models.zoo_openclip import openai_text, openai_vision, siglip_text, siglip_vision

    torch.manual_seed(seed)
    if family == "eva":
        model = openeva.create_model("EVA02-test")
    elif family == "vit":
        cfg = CLIPConfig(embed_dim=32, vision=openai_vision(64, 2, 2, 128, 8, 32, 32, quick_gelu=True),
                         text=openai_text(64, 2, 2, 32, quick_gelu=True))
        model = _clip("vit-test", cfg)
    elif family == "siglip":
        cfg = CLIPConfig(embed_dim=64, vision=siglip_vision(8, 64, 2, 2, 128, 32, "gelu_tanh"),
                         text=siglip_text(64, 2, 2, 4.0, 300, 16, "gelu", "linear", 64),
                         init_logit_scale=math.log(10), init_logit_bias=-10.0)
        model = _clip("siglip-test", cfg, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash")
    elif family == "timm":
        model = openeva.create_model("convnext-test")
    elif family == "hf":
        base = openeva.get_model_spec("EVA02-test").config
        model = _clip("hf-test", CLIPConfig(embed_dim=32, vision=base.vision, text=hf_text_config(32)))
    else:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    return randomize(model, seed).eval()


def image_size(model: nn.Module) -> tuple[int, int]:
    return tuple(model.spec.preprocess_cfg(model.visual.cfg.img_size)["size"])


def text_ids(model: nn.Module, batch: int, seed: int = 0) -> torch.Tensor:
    """(B, L) token ids the family's text tower reads: CLIP rows end with EOT (the largest id), HF rows with
    padding (id 1) after a few tokens."""
    g = torch.Generator().manual_seed(seed)
    L = model.context_length
    text = model.text
    vocab = getattr(text, "vocab_size", None)
    ids = torch.randint(3, vocab - 1, (batch, L), generator=g)
    if getattr(text, "pad_token_id", None) is not None:  # HF: real tokens, then padding
        ids[:, 0] = 0
        for i in range(batch):
            ids[i, 4 + i:] = text.pad_token_id
    else:
        ids[:, -1] = vocab - 1
    return ids
