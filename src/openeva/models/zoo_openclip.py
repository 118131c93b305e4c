"""open_clip's plain-ViT CLIP zoo as rows of data: OpenAI / LAION / DataComp / DFN / MetaCLIP ViTs and SigLIP /
SigLIP 2, under open_clip's exact names (``ViT-B-32``, ``ViT-SO400M-14-SigLIP``, ...).

Every row is built by openeva's own ``EVAViT`` / ``TextTransformer`` (no RoPE, no SwiGLU), with the options the
checkpoints need:

- OpenAI-style (Radford et al., 2021): class token, ``norm_pre`` (OpenAI's ``ln_pre``), LayerNorm eps 1e-5, a
  bias-free patch kernel and projection, a causal text tower pooled at the EOT token. ``-quickgelu`` names use
  QuickGELU in both towers, as the OpenAI, MetaCLIP and DFN weights were trained (open_clip keeps the plain name
  for weights trained with exact GELU, e.g. LAION's).
- SigLIP (Zhai et al., 2023) / SigLIP 2 (Tschannen et al., 2025): no class token, final LN then attention pooling
  with a learned query (``global_pool="map"``), no image projection, LayerNorm eps 1e-6; a bidirectional text tower
  pooled at the last position with a biased Linear projection; a learned ``logit_bias`` (init -10) and
  ``logit_scale`` init log(10). The image MLP's activation follows timm's model of the same weights (exact GELU
  for most, tanh-GELU for some), the text MLP's open_clip's config (tanh-GELU for SigLIP 2).

Preprocessing per open_clip's pretrained configs: OpenAI mean/std, bicubic, shortest-side resize for the CLIP rows;
mean = std = 0.5, bicubic, squash resize for SigLIP. Published tags map to the Hugging Face Hub files open_clip
downloads; a tag is listed under a name only where open_clip's activation for the tag matches the name's
(``openai`` is a ``-quickgelu`` tag). SigLIP's SentencePiece / HF tokenizers are read from the checkpoint folder by
``openeva.models.tokenizer`` (each SigLIP row's ``tokenizer``: the Hub repo open_clip takes it from, or a local
checkpoint folder passed to ``get_tokenizer``).
"""

from __future__ import annotations

import math

from openeva.models.clip import CLIPConfig
from openeva.models.text import TextConfig
from openeva.models.tokenizer import TokenizerSpec
from openeva.models.vit import ViTConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)

# ------------------------------------------------------------------------------------ OpenAI-style ViTs
# vision: (width, layers, heads, mlp hidden, patch); text: (width, heads, layers); embed dim
_CLIP_SIZES = {
    "B-32": ((768, 12, 12, 3072, 32), (512, 8, 12), 512),
    "B-16": ((768, 12, 12, 3072, 16), (512, 8, 12), 512),
    "L-14": ((1024, 24, 16, 4096, 14), (768, 12, 12), 768),
    "H-14": ((1280, 32, 16, 5120, 14), (1024, 16, 24), 1024),  # head width 80
    "bigG-14": ((1664, 48, 16, 8192, 14), (1280, 20, 32), 1280),  # head width 104, mlp_ratio 4.9231
}


def _hub(repo: str, filename: str = "open_clip_pytorch_model.bin") -> str:
    return f"hf-hub:{repo}/{filename}"


# name: (size, image size, quick_gelu, {tag: hub file})
_CLIP_ROWS = {
    "ViT-B-32": ("B-32", 224, False, {
        "laion2b_s34b_b79k": _hub("laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        "laion2b_e16": _hub("timm/vit_base_patch32_clip_224.laion2b_e16"),
        "datacomp_xl_s13b_b90k": _hub("laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K")}),
    "ViT-B-32-quickgelu": ("B-32", 224, True, {
        "openai": _hub("timm/vit_base_patch32_clip_224.openai"),
        "laion400m_e32": _hub("timm/vit_base_patch32_clip_224.laion400m_e32"),
        "metaclip_400m": _hub("timm/vit_base_patch32_clip_224.metaclip_400m"),
        "metaclip_fullcc": _hub("timm/vit_base_patch32_clip_224.metaclip_2pt5b")}),
    "ViT-B-32-256": ("B-32", 256, False, {
        "datacomp_s34b_b86k": _hub("laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K")}),
    "ViT-B-16": ("B-16", 224, False, {
        "laion2b_s34b_b88k": _hub("laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
        "datacomp_xl_s13b_b90k": _hub("laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K")}),
    "ViT-B-16-quickgelu": ("B-16", 224, True, {
        "openai": _hub("timm/vit_base_patch16_clip_224.openai"),
        "dfn2b": _hub("apple/DFN2B-CLIP-ViT-B-16"),
        "metaclip_fullcc": _hub("timm/vit_base_patch16_clip_224.metaclip_2pt5b")}),
    "ViT-L-14": ("L-14", 224, False, {
        "datacomp_xl_s13b_b90k": _hub("laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"),
        "dfn2b_s39b": _hub("apple/DFN2B-CLIP-ViT-L-14-39B")}),
    "ViT-L-14-quickgelu": ("L-14", 224, True, {
        "openai": _hub("timm/vit_large_patch14_clip_224.openai"),
        "dfn2b": _hub("apple/DFN2B-CLIP-ViT-L-14"),
        "metaclip_fullcc": _hub("timm/vit_large_patch14_clip_224.metaclip_2pt5b")}),
    "ViT-L-14-336": ("L-14", 336, False, {}),
    "ViT-L-14-336-quickgelu": ("L-14", 336, True, {
        "openai": _hub("timm/vit_large_patch14_clip_336.openai")}),
    "ViT-H-14": ("H-14", 224, False, {
        "laion2b_s32b_b79k": _hub("laion/CLIP-ViT-H-14-laion2B-s32B-b79K")}),
    "ViT-H-14-quickgelu": ("H-14", 224, True, {
        "metaclip_fullcc": _hub("timm/vit_huge_patch14_clip_224.metaclip_2pt5b")}),
    "ViT-H-14-378": ("H-14", 378, False, {}),
    "ViT-H-14-378-quickgelu": ("H-14", 378, True, {}),  # dfn5b resizes by squashing: not this row's preprocessing
    "ViT-bigG-14": ("bigG-14", 224, False, {
        "laion2b_s39b_b160k": _hub("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")}),
    "ViT-bigG-14-quickgelu": ("bigG-14", 224, True, {
        "metaclip_fullcc": _hub("timm/vit_gigantic_patch14_clip_224.metaclip_2pt5b")}),
}


def openai_vision(width: int, layers: int, heads: int, hidden: int, patch: int, img: int, embed: int,
                  quick_gelu: bool) -> ViTConfig:
    """An OpenAI / open_clip ``VisionTransformer`` image tower as an openeva ViT config."""
    return ViTConfig(embed_dim=width, depth=layers, num_heads=heads, mlp_hidden=hidden, patch_size=patch,
                     img_size=img, mlp="gelu", mlp_act="quick_gelu" if quick_gelu else "gelu", rope=False,
                     rope_ref_grid=None, global_pool="token", norm_pre=True, patch_bias=False, head_bias=False,
                     num_classes=embed, norm_eps=1e-5)


def openai_text(width: int, heads: int, layers: int, embed: int, quick_gelu: bool) -> TextConfig:
    return TextConfig(width=width, heads=heads, layers=layers, embed_dim=embed,
                      act="quick_gelu" if quick_gelu else "gelu")


# ---------------------------------------------------------------------------------------------- SigLIP
# vision: (patch, width, depth, heads, mlp hidden); text: (width, heads, layers, mlp_ratio)
_SIGLIP_VISION = {
    "B-16": (16, 768, 12, 12, 3072), "B-32": (32, 768, 12, 12, 3072), "L-16": (16, 1024, 24, 16, 4096),
    "SO400M-14": (14, 1152, 27, 16, 4304), "SO400M-16": (16, 1152, 27, 16, 4304), "gopt-16": (16, 1536, 40, 16, 6144),
}
_SIGLIP_TEXT = {"B": (768, 12, 12, 4.0), "L": (1024, 16, 24, 4.0), "SO400M": (1152, 16, 27, 3.7362)}
_SIGLIP_VOCAB = {"en": 32000, "i18n": 250000, "v2": 256000}

# name: (vision size, image size, image MLP act, text size, vocab, context, text act, text proj, embed, tokenizer)
_SIGLIP_ROWS = {
    "ViT-B-16-SigLIP": ("B-16", 224, "gelu", "B", "en", 64, "gelu", "linear", 768, "timm/ViT-B-16-SigLIP"),
    "ViT-B-16-SigLIP-256": ("B-16", 256, "gelu", "B", "en", 64, "gelu", "linear", 768, "timm/ViT-B-16-SigLIP"),
    "ViT-B-16-SigLIP-384": ("B-16", 384, "gelu", "B", "en", 64, "gelu", "linear", 768, "timm/ViT-B-16-SigLIP"),
    "ViT-B-16-SigLIP-512": ("B-16", 512, "gelu", "B", "en", 64, "gelu", "linear", 768, "timm/ViT-B-16-SigLIP"),
    "ViT-B-16-SigLIP-i18n-256": ("B-16", 256, "gelu", "B", "i18n", 64, "gelu", "linear", 768,
                                 "timm/ViT-B-16-SigLIP-i18n-256"),
    "ViT-L-16-SigLIP-256": ("L-16", 256, "gelu", "L", "en", 64, "gelu", "linear", 1024, "timm/ViT-B-16-SigLIP"),
    "ViT-L-16-SigLIP-384": ("L-16", 384, "gelu", "L", "en", 64, "gelu", "linear", 1024, "timm/ViT-B-16-SigLIP"),
    "ViT-SO400M-14-SigLIP": ("SO400M-14", 224, "gelu", "SO400M", "en", 16, "gelu", "linear", 1152,
                             "timm/ViT-B-16-SigLIP"),
    "ViT-SO400M-14-SigLIP-378": ("SO400M-14", 378, "gelu", "SO400M", "en", 64, "gelu", "linear", 1152,
                                 "timm/ViT-B-16-SigLIP"),
    "ViT-SO400M-16-SigLIP-i18n-256": ("SO400M-16", 256, "gelu_tanh", "SO400M", "i18n", 64, "gelu", "none", 1152,
                                      "timm/ViT-B-16-SigLIP-i18n-256"),
    # SigLIP 2: the same towers, the Gemma tokenizer's 256k vocabulary, tanh-GELU in the text MLP
    "ViT-B-16-SigLIP2": ("B-16", 224, "gelu", "B", "v2", 64, "gelu_tanh", "linear", 768, "timm/ViT-B-16-SigLIP2"),
    "ViT-B-16-SigLIP2-256": ("B-16", 256, "gelu", "B", "v2", 64, "gelu_tanh", "linear", 768,
                             "timm/ViT-B-16-SigLIP2-256"),
    "ViT-B-16-SigLIP2-384": ("B-16", 384, "gelu", "B", "v2", 64, "gelu_tanh", "linear", 768,
                             "timm/ViT-B-16-SigLIP2-384"),
    "ViT-B-16-SigLIP2-512": ("B-16", 512, "gelu", "B", "v2", 64, "gelu_tanh", "linear", 768,
                             "timm/ViT-B-16-SigLIP2-512"),
    "ViT-B-32-SigLIP2-256": ("B-32", 256, "gelu_tanh", "B", "v2", 64, "gelu_tanh", "linear", 768,
                             "timm/ViT-B-32-SigLIP2-256"),
    "ViT-L-16-SigLIP2-256": ("L-16", 256, "gelu", "L", "v2", 64, "gelu_tanh", "linear", 1024,
                             "timm/ViT-L-16-SigLIP2-256"),
    "ViT-L-16-SigLIP2-384": ("L-16", 384, "gelu", "L", "v2", 64, "gelu_tanh", "linear", 1024,
                             "timm/ViT-L-16-SigLIP2-384"),
    "ViT-L-16-SigLIP2-512": ("L-16", 512, "gelu_tanh", "L", "v2", 64, "gelu_tanh", "linear", 1024,
                             "timm/ViT-L-16-SigLIP2-512"),
    "ViT-SO400M-14-SigLIP2": ("SO400M-14", 224, "gelu", "SO400M", "v2", 64, "gelu_tanh", "linear", 1152,
                              "timm/ViT-SO400M-14-SigLIP2"),
    "ViT-SO400M-14-SigLIP2-378": ("SO400M-14", 378, "gelu", "SO400M", "v2", 64, "gelu_tanh", "linear", 1152,
                                  "timm/ViT-SO400M-14-SigLIP2-378"),
    "ViT-SO400M-16-SigLIP2-256": ("SO400M-16", 256, "gelu_tanh", "SO400M", "v2", 64, "gelu_tanh", "linear", 1152,
                                  "timm/ViT-SO400M-16-SigLIP2-256"),
    "ViT-SO400M-16-SigLIP2-384": ("SO400M-16", 384, "gelu_tanh", "SO400M", "v2", 64, "gelu_tanh", "linear", 1152,
                                  "timm/ViT-SO400M-16-SigLIP2-384"),
    "ViT-SO400M-16-SigLIP2-512": ("SO400M-16", 512, "gelu_tanh", "SO400M", "v2", 64, "gelu_tanh", "linear", 1152,
                                  "timm/ViT-SO400M-16-SigLIP2-512"),
    "ViT-gopt-16-SigLIP2-256": ("gopt-16", 256, "gelu_tanh", "SO400M", "v2", 64, "gelu_tanh", "linear", 1536,
                                "timm/ViT-gopt-16-SigLIP2-256"),
    "ViT-gopt-16-SigLIP2-384": ("gopt-16", 384, "gelu_tanh", "SO400M", "v2", 64, "gelu_tanh", "linear", 1536,
                                "timm/ViT-gopt-16-SigLIP2-384"),
}
# Not listed: ViT-SO400M-14-SigLIP-384 (384 px is not a multiple of patch 14; timm's kernel drops the last 6 rows and
# columns). Its -378 row below is open_clip's corrected variant and loads the same weights (a 27 x 27 grid either way):
# open_clip's pretrained config for ViT-SO400M-14-SigLIP-378 points at the -384 repo.
_SIGLIP_HUB = {"ViT-SO400M-14-SigLIP-378": "timm/ViT-SO400M-14-SigLIP-384"}


def siglip_vision(patch: int, width: int, depth: int, heads: int, hidden: int, img: int, act: str) -> ViTConfig:
    """timm's SigLIP ViT (``vit_*_siglip_*``: no class token, ``global_pool='map'``, LN eps 1e-6, no head)."""
    return ViTConfig(embed_dim=width, depth=depth, num_heads=heads, mlp_hidden=hidden, patch_size=patch, img_size=img,
                     mlp="gelu", mlp_act=act, rope=False, rope_ref_grid=None, class_token=False, global_pool="map",
                     num_classes=0, norm_eps=1e-6)


def siglip_text(width: int, heads: int, layers: int, mlp_ratio: float, vocab: int, context: int, act: str,
                proj: str, embed: int) -> TextConfig:
    """open_clip's SigLIP text tower: bidirectional, last-token pooling, LN eps 1e-6, biased Linear projection."""
    return TextConfig(width=width, heads=heads, layers=layers, embed_dim=embed, context_length=context,
                      vocab_size=vocab, mlp_ratio=mlp_ratio, norm_eps=1e-6, causal=False, pool="last", proj=proj,
                      act=act)


def _rows() -> list[dict]:
    rows = []
    for name, (size, img, quick, tags) in _CLIP_ROWS.items():
        (w, depth, heads, hidden, patch), (tw, th, tl), embed = _CLIP_SIZES[size]
        rows.append(dict(
            name=name,
            config=CLIPConfig(embed_dim=embed, vision=openai_vision(w, depth, heads, hidden, patch, img, embed, quick),
                              text=openai_text(tw, th, tl, embed, quick)),
            pretrained=tags, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic", resize_mode="shortest",
            description=f"open_clip ViT-{size} CLIP{' (QuickGELU)' if quick else ''}, OpenAI layout",
        ))
    for name, (vsize, img, vact, tsize, vocab, ctx, tact, tproj, embed, _tok) in _SIGLIP_ROWS.items():
        patch, w, depth, heads, hidden = _SIGLIP_VISION[vsize]
        tw, th, tl, ratio = _SIGLIP_TEXT[tsize]
        rows.append(dict(
            name=name,
            config=CLIPConfig(embed_dim=embed, vision=siglip_vision(patch, w, depth, heads, hidden, img, vact),
                              text=siglip_text(tw, th, tl, ratio, _SIGLIP_VOCAB[vocab], ctx, tact, tproj, embed),
                              init_logit_scale=math.log(10), init_logit_bias=-10.0),
            pretrained={"webli": _hub(_SIGLIP_HUB.get(name, f"timm/{name}"))},
            mean=SIGLIP_MEAN, std=SIGLIP_STD, interpolation="bicubic", resize_mode="squash",
            tokenizer=TokenizerSpec(**tokenizer_kwargs(name)),
            description=f"{'SigLIP 2' if vocab == 'v2' else 'SigLIP'} ViT-{vsize} (sigmoid loss, logit bias)",
        ))
    return rows


def tokenizer_kwargs(name: str) -> dict | None:
    """``openeva.models.tokenizer.TokenizerSpec`` keywords for a SigLIP row, as open_clip's config gives them (an HF
    tokenizer from that Hub repo, ``canonicalize`` cleaning, the text tower's context); None for the CLIP BPE rows."""
    row = _SIGLIP_ROWS.get(name)
    if row is None:
        return None
    return {"kind": "hf", "source": row[-1], "clean": "canonicalize", "context_length": row[5]}


OPENCLIP_ZOO: list[dict] = _rows()  # ModelSpec keyword arguments, registered by ``openeva.models.registry``
