"""open_clip's CLIP models with a library tower (a timm vision backbone, a Hugging Face text encoder): rows of
data for ``openeva.models.registry``.

The LAION ConvNeXt CLIPs (Liu et al., 2022 backbones; open_clip's ``convnext_*`` configs): timm's ConvNeXt,
its default average pool (``pool=""`` before a projection, as open_clip's ``timm_pool: ""``), a bias-free
linear projection (``convnext_large_d``: an MLP), and the CLIP text transformer. Names and pretrained tags are
open_clip's; ``convnext_base`` here is the CLIP model, ``timm:convnext_base`` timm's ImageNet backbone (the
registry's naming rule). The multilingual CLIPs (``xlm-roberta-*``) pair open_clip's ViT with XLM-RoBERTa
(mean pooling, MLP projection); their transformers configs are written here, so they build offline (the
tokenizer comes from the Hub id ``xlm-roberta-base`` / ``-large``, or a local folder via ``get_tokenizer``).
Each row is a dict of :class:`~openeva.models.registry.ModelSpec` arguments.
"""

from __future__ import annotations

from openeva.models.clip import CLIPConfig
from openeva.models.hf_text import HFTextConfig
from openeva.models.text import TextConfig
from openeva.models.timm_tower import TimmTowerConfig
from openeva.models.zoo_openclip import openai_vision

_LAION = "hf-hub:laion/{}/open_clip_pytorch_model.bin"


def convnext_clip(timm_name: str, embed: int, size: int, proj: str, width: int, heads: int, layers: int,
                  drop_path: float = 0.1) -> CLIPConfig:
    """A ConvNeXt CLIP as open_clip's config states it (``timm_drop_path`` 0.1 is a training setting)."""
    vision = TimmTowerConfig(timm_name=timm_name, embed_dim=embed, img_size=size, pool="", proj=proj,
                             drop_path_rate=drop_path)
    return CLIPConfig(embed_dim=embed, vision=vision,
                      text=TextConfig(width=width, heads=heads, layers=layers, embed_dim=embed))


# name: (timm trunk, embed dim, image size, projection, text width / heads / layers, {tag: laion repo})
_CONVNEXT = {
    "convnext_tiny": ("convnext_tiny", 1024, 224, "linear", (512, 8, 12), {}),
    "convnext_small": ("convnext_small", 512, 224, "linear", (512, 8, 12), {}),
    "convnext_base": ("convnext_base", 512, 224, "linear", (512, 8, 12),
                      {"laion400m_s13b_b51k": "CLIP-convnext_base-laion400M-s13B-b51K"}),
    "convnext_base_w": ("convnext_base", 640, 256, "linear", (640, 10, 12),
                        {"laion2b_s13b_b82k": "CLIP-convnext_base_w-laion2B-s13B-b82K",
                         "laion2b_s13b_b82k_augreg": "CLIP-convnext_base_w-laion2B-s13B-b82K-augreg",
                         "laion_aesthetic_s13b_b82k": "CLIP-convnext_base_w-laion_aesthetic-s13B-b82K"}),
    "convnext_base_w_320": ("convnext_base", 640, 320, "linear", (640, 10, 12),
                            {"laion_aesthetic_s13b_b82k": "CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K",
                             "laion_aesthetic_s13b_b82k_augreg":
                                 "CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K-augreg"}),
    "convnext_large": ("convnext_large", 768, 224, "linear", (768, 12, 12), {}),
    "convnext_large_d": ("convnext_large", 768, 256, "mlp", (768, 12, 16),
                         {"laion2b_s26b_b102k_augreg": "CLIP-convnext_large_d.laion2B-s26B-b102K-augreg"}),
    "convnext_large_d_320": ("convnext_large", 768, 320, "mlp", (768, 12, 16),
                             {"laion2b_s29b_b131k_ft": "CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft",
                              "laion2b_s29b_b131k_ft_soup": "CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"}),
    "convnext_xlarge": ("convnext_xlarge", 1024, 256, "linear", (1024, 16, 20), {}),
    "convnext_xxlarge": ("convnext_xxlarge", 1024, 256, "linear", (1024, 16, 24),
                         {"laion2b_s34b_b82k_augreg": "CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg",
                          "laion2b_s34b_b82k_augreg_rewind": "CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-rewind",
                          "laion2b_s34b_b82k_augreg_soup": "CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup"}),
    "convnext_xxlarge_320": ("convnext_xxlarge", 1024, 320, "linear", (1024, 16, 24), {}),
}


# XLM-RoBERTa's published configs (the fields that differ from transformers' defaults)
_XLMR = dict(model_type="xlm-roberta", vocab_size=250002, max_position_embeddings=514, type_vocab_size=1,
             layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
XLMR_CONFIGS = {
    "xlm-roberta-base": dict(_XLMR, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072),
    "xlm-roberta-large": dict(_XLMR, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096),
}
# name: (ViT width, depth, heads, mlp, patch, embed dim, text model, {tag: laion repo})
_XLMR_CLIPS = {
    "xlm-roberta-base-ViT-B-32": (768, 12, 12, 3072, 32, 512, "xlm-roberta-base",
                                  {"laion5b_s13b_b90k": "CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k"}),
    "xlm-roberta-large-ViT-H-14": (1280, 32, 16, 5120, 14, 1024, "xlm-roberta-large",
                                   {"frozen_laion5b_s13b_b90k":
                                        "CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k"}),
}


def _rows() -> list[dict]:
    rows = []
    for name, (trunk, embed, size, proj, (width, heads, layers), tags) in _CONVNEXT.items():
        rows.append(dict(name=name, config=convnext_clip(trunk, embed, size, proj, width, heads, layers),
                         pretrained={tag: _LAION.format(repo) for tag, repo in tags.items()},
                         description=f"open_clip ConvNeXt CLIP (timm {trunk} tower, {size}px)"))
    for name, (w, depth, heads, hidden, patch, embed, text_model, tags) in _XLMR_CLIPS.items():
        text = HFTextConfig(hf_config=XLMR_CONFIGS[text_model], embed_dim=embed, pooler="mean_pooler", proj="mlp",
                            hf_model_name=text_model)
        vision = openai_vision(w, depth, heads, hidden, patch, 224, embed, False)
        rows.append(dict(name=name, config=CLIPConfig(embed_dim=embed, vision=vision, text=text),
                         pretrained={tag: _LAION.format(repo) for tag, repo in tags.items()},
                         description=f"open_clip multilingual CLIP (ViT + {text_model} text tower; needs openeva[hf])"))
    # a toy of the same structure for tests and CPU smoke runs: timm's test_convnext at 64 px, a 2-layer text tower
    rows.append(dict(name="convnext-test",
                     config=CLIPConfig(embed_dim=32,
                                       vision=TimmTowerConfig(timm_name="test_convnext", embed_dim=32, img_size=64,
                                                              pool="", proj="linear"),
                                       text=TextConfig(width=64, heads=2, layers=2, embed_dim=32)),
                     description="test CLIP with a timm tower (test_convnext, 64px)"))
    return rows


TIMM_CLIP_ZOO: list[dict] = _rows()  # ModelSpec keyword arguments, registered by ``openeva.models.registry``
