"""Every published EVA size as a row of data, registered under the name users already know.

Backbones use timm's names (``eva02_base_patch14_224``), CLIP models open_clip's (``EVA02-B-16``). Each entry
carries its config, its preprocessing, its tokenizer (CLIP models; None = the CLIP BPE) and the published
weights it can load (tag -> Hugging Face Hub file). Nothing here depends on parsing a name: a new size is a new
row.

Naming rule where open_clip and timm use one name for two things (``convnext_base`` is a CLIP model in open_clip
and an ImageNet backbone in timm): a registered name is exact and wins, so ``convnext_base`` is open_clip's CLIP
model (its vision tower is timm's ConvNeXt; rows in ``zoo_timm.py``); ``timm:<name>`` always means timm's bare
backbone (``timm:convnext_base``, ``timm:convnext_tiny.fb_in1k``), for any model ``timm.list_models()`` knows,
built as a :class:`~openeva.models.timm_tower.TimmTower` with timm's own head and preprocessing. ``timm:`` names
are resolved on use, not listed by :func:`list_models`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openeva.models.clip import CLIPConfig
from openeva.models.text import TextConfig
from openeva.models.timm_tower import TimmTowerConfig, import_timm
from openeva.models.tokenizer import TokenizerSpec
from openeva.models.vit import ViTConfig
from openeva.models.zoo_openclip import OPENCLIP_ZOO
from openeva.models.zoo_timm import TIMM_CLIP_ZOO

TIMM_PREFIX = "timm:"  # ``timm:<timm model name>``: timm's bare backbone (see the naming rule above)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: ViTConfig | TimmTowerConfig | CLIPConfig
    pretrained: dict[str, str] = field(default_factory=dict)  # tag -> "hf-hub:org/repo/filename"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # open_clip's: "shortest" (resize + center crop) | "squash" (SigLIP) | "longest"
    description: str = ""
    tokenizer: TokenizerSpec | None = None  # None: the CLIP BPE (or an HF text tower's own tokenizer)

    @property
    def is_clip(self) -> bool:
        return isinstance(self.config, CLIPConfig)

    @property
    def image_size(self) -> tuple[int, int]:
        vision = self.config.vision if self.is_clip else self.config
        return vision.img_size

    def preprocess_cfg(self, image_size: tuple[int, int] | None = None) -> dict:
        return {"size": tuple(image_size or self.image_size), "mean": self.mean, "std": self.std,
                "interpolation": self.interpolation, "resize_mode": self.resize_mode}


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_model_spec(name: str) -> ModelSpec:
    """The registered row ``name``; ``timm:<name>`` is timm's bare backbone (the naming rule above)."""
    if name.startswith(TIMM_PREFIX):
        return timm_backbone_spec(name[len(TIMM_PREFIX):])
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if name.lower().replace("_", "-") in n.lower().replace("_", "-")]
        hint = f" Did you mean {', '.join(close[:5])}?" if close else " See `openeva models`."
        raise ValueError(f"unknown model {name!r}.{hint}") from None


def timm_backbone_spec(timm_name: str) -> ModelSpec:
    """timm's ``timm_name`` (``convnext_tiny`` or ``convnext_tiny.fb_in1k``) as a backbone spec: its classifier
    head (``num_classes`` from timm's pretrained config), default pool, input size and normalisation, and its
    published weights on the Hub as tags."""
    timm = import_timm()
    arch = timm_name.split(".")[0]
    if not timm_name or not timm.is_model(arch):
        close = timm.list_models(f"*{arch[:8]}*")[:5] if arch else []
        hint = f" Close timm names: {', '.join(close)}." if close else " See timm.list_models()."
        raise ValueError(f"unknown timm model {timm_name!r} (from {TIMM_PREFIX}{timm_name}).{hint}")
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(timm_name)
    size = tuple(pcfg.input_size[-2:]) if pcfg is not None and pcfg.input_size else (224, 224)
    tags = {}
    for full in timm.list_pretrained(f"{arch}.*"):
        hub = getattr(get_pretrained_cfg(full), "hf_hub_id", None)
        if hub:
            tags[full.split(".", 1)[1]] = f"hf-hub:{hub}/model.safetensors"
    extra = {}
    if pcfg is not None:
        extra = {"mean": tuple(pcfg.mean), "std": tuple(pcfg.std), "interpolation": pcfg.interpolation or "bicubic"}
    config = TimmTowerConfig(timm_name=timm_name, embed_dim=int(getattr(pcfg, "num_classes", 0) or 1000),
                             img_size=size, pool="default", proj="")
    return ModelSpec(name=f"{TIMM_PREFIX}{timm_name}", config=config, pretrained=tags,
                     description=f"timm backbone {timm_name}", **extra)


def list_models(kind: str | None = None) -> list[str]:
    """Registered names; ``kind`` = "clip" or "backbone" filters."""
    specs = _REGISTRY.values()
    if kind is not None:
        if kind not in ("clip", "backbone"):
            raise ValueError(f"kind must be 'clip' or 'backbone', got {kind!r}")
        specs = [s for s in specs if s.is_clip == (kind == "clip")]
    return sorted(s.name for s in specs)


def list_pretrained() -> list[tuple[str, str]]:
    return sorted((s.name, tag) for s in _REGISTRY.values() for tag in s.pretrained)


# ------------------------------------------------------------------------------------------- the tables
# EVA-02 backbones (MIM-pretrained; fine-tuned variants differ in img_size / num_classes only).
# width, depth, heads, SwiGLU hidden, sub-LN
_BACKBONES = {
    "tiny": (192, 12, 3, 512, False),
    "small": (384, 12, 6, 1024, False),
    "base": (768, 12, 12, 2048, True),
    "large": (1024, 24, 16, 2730, True),
}
_MIM_TAGS = {"tiny": ("mim_in22k",), "small": ("mim_in22k",), "base": ("mim_in22k",), "large": ("mim_in22k", "mim_m38m")}

for _size, (_d, _depth, _h, _hid, _subln) in _BACKBONES.items():
    _name = f"eva02_{_size}_patch14_224"
    register_model(ModelSpec(
        name=_name,
        config=ViTConfig(embed_dim=_d, depth=_depth, num_heads=_h, mlp_hidden=_hid, mlp_norm=_subln),
        pretrained={t: f"hf-hub:timm/{_name}.{t}/model.safetensors" for t in _MIM_TAGS[_size]},
        description=f"EVA-02-{_size[0].upper()} backbone, MIM-pretrained (mean pooling + fc_norm head)",
    ))

# Fine-tuned classification resolutions (EVA-02 paper, Table 3).
for _size, _res, _tag in (("tiny", 336, "mim_in22k_ft_in1k"), ("small", 336, "mim_in22k_ft_in1k"),
                          ("base", 448, "mim_in22k_ft_in22k_in1k"), ("large", 448, "mim_m38m_ft_in22k_in1k")):
    _d, _depth, _h, _hid, _subln = _BACKBONES[_size]
    _name = f"eva02_{_size}_patch14_{_res}"
    register_model(ModelSpec(
        name=_name,
        config=ViTConfig(embed_dim=_d, depth=_depth, num_heads=_h, mlp_hidden=_hid, mlp_norm=_subln,
                         img_size=_res, num_classes=1000),
        pretrained={_tag: f"hf-hub:timm/{_name}.{_tag}/model.safetensors"},
        description=f"EVA-02-{_size[0].upper()} ImageNet-1k classifier at {_res}px",
    ))


def _eva02_clip_vision(width, depth, heads, hidden, patch, img, embed):
    return ViTConfig(embed_dim=width, depth=depth, num_heads=heads, mlp_hidden=hidden, patch_size=patch, img_size=img,
                     mlp_norm=True, attn_norm=True, global_pool="token", num_classes=embed)


def _gelu_clip_vision(width, depth, heads, hidden, post_norm, embed):
    return ViTConfig(embed_dim=width, depth=depth, num_heads=heads, mlp_hidden=hidden, mlp="gelu", rope=False,
                     rope_ref_grid=None, post_norm=post_norm, global_pool="token", num_classes=embed)


def _text(width, heads, layers, embed):
    return TextConfig(width=width, heads=heads, layers=layers, embed_dim=embed)


_CLIPS = {
    # name: (vision, text, embed, {tag: hub file})
    "EVA02-B-16": (_eva02_clip_vision(768, 12, 12, 2048, 16, 224, 512), _text(512, 8, 12, 512), 512,
                   {"merged2b_s8b_b131k": "hf-hub:timm/eva02_base_patch16_clip_224.merged2b_s8b_b131k/open_clip_pytorch_model.bin"}),
    "EVA02-L-14": (_eva02_clip_vision(1024, 24, 16, 2730, 14, 224, 768), _text(768, 12, 12, 768), 768,
                   {"merged2b_s4b_b131k": "hf-hub:timm/eva02_large_patch14_clip_224.merged2b_s4b_b131k/open_clip_pytorch_model.bin"}),
    "EVA02-L-14-336": (_eva02_clip_vision(1024, 24, 16, 2730, 14, 336, 768), _text(768, 12, 12, 768), 768,
                       {"merged2b_s6b_b61k": "hf-hub:timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k/open_clip_pytorch_model.bin"}),
    "EVA02-E-14": (_gelu_clip_vision(1792, 64, 16, 15360, True, 1024), _text(1024, 16, 24, 1024), 1024,
                   {"laion2b_s4b_b115k": "hf-hub:timm/eva02_enormous_patch14_clip_224.laion2b_s4b_b115k/open_clip_pytorch_model.bin"}),
    "EVA02-E-14-plus": (_gelu_clip_vision(1792, 64, 16, 15360, True, 1024), _text(1280, 20, 32, 1024), 1024,
                        {"laion2b_s9b_b144k": "hf-hub:timm/eva02_enormous_patch14_plus_clip_224.laion2b_s9b_b144k/open_clip_pytorch_model.bin"}),
    "EVA01-g-14": (_gelu_clip_vision(1408, 40, 16, 6144, False, 1024), _text(768, 12, 12, 1024), 1024,
                   {"laion400m_s11b_b41k": "hf-hub:timm/eva_giant_patch14_clip_224.laion400m_s11b_b41k/open_clip_pytorch_model.bin"}),
    "EVA01-g-14-plus": (_gelu_clip_vision(1408, 40, 16, 6144, False, 1024), _text(1024, 16, 24, 1024), 1024,
                        {"merged2b_s11b_b114k": "hf-hub:timm/eva_giant_patch14_plus_clip_224.merged2b_s11b_b114k/open_clip_pytorch_model.bin"}),
}
for _name, (_vision, _txt, _embed, _tags) in _CLIPS.items():
    register_model(ModelSpec(name=_name, config=CLIPConfig(embed_dim=_embed, vision=_vision, text=_txt),
                             pretrained=_tags, description="EVA-CLIP"))

# Tiny models for tests and CPU smoke runs: same code paths (RoPE, SwiGLU, sub-LN, post-norm, GELU), toy sizes.
register_model(ModelSpec(
    name="eva02_test_patch8_32",
    config=ViTConfig(embed_dim=64, depth=2, num_heads=2, mlp_hidden=128, patch_size=8, img_size=32,
                     mlp_norm=True, rope_ref_grid=(4, 4)),
    description="test backbone (sub-LN SwiGLU, RoPE)",
))
register_model(ModelSpec(
    name="eva02_test_packed_patch8_32",
    config=ViTConfig(embed_dim=64, depth=2, num_heads=2, mlp_hidden=128, patch_size=8, img_size=32,
                     rope_ref_grid=(4, 4)),
    description="test backbone (packed SwiGLU, RoPE, like Ti/S)",
))
register_model(ModelSpec(
    name="EVA02-test",
    config=CLIPConfig(embed_dim=32, vision=_eva02_clip_vision(64, 2, 2, 128, 8, 32, 32).replace(rope_ref_grid=(4, 4)),
                      text=TextConfig(width=64, heads=2, layers=2, embed_dim=32)),
    description="test EVA-CLIP (sub-LN towers)",
))
register_model(ModelSpec(
    name="EVA02-E-test",
    config=CLIPConfig(embed_dim=32, vision=_gelu_clip_vision(64, 2, 2, 256, True, 32).replace(patch_size=8, img_size=32),
                      text=TextConfig(width=64, heads=2, layers=2, embed_dim=32)),
    description="test EVA-CLIP with the post-norm GELU tower of EVA02-E",
))

# Quickstart sizes (`openeva quickstart`: the whole EVA chain on the built-in shapes data, on 2 CPU cores).
# A small EVA-02 tower (64 px, patch 8, 8x8 grid = the RoPE reference grid, sub-LN SwiGLU) registered twice: as
# a CLIP vision tower and as the matching MIM backbone, so the MIM student hands off to the CLIP tower.
_QUICKSTART_TOWER = dict(embed_dim=128, depth=4, num_heads=4, mlp_hidden=344, patch_size=8, img_size=64,
                         mlp_norm=True, rope_ref_grid=(8, 8))
register_model(ModelSpec(
    name="eva02_quickstart_patch8_64",
    config=ViTConfig(**_QUICKSTART_TOWER),
    description="quickstart EVA-02 backbone (64px, patch 8, width 128, depth 4, sub-LN SwiGLU, RoPE)",
))
register_model(ModelSpec(
    name="EVA02-quickstart",
    config=CLIPConfig(embed_dim=64,
                      vision=ViTConfig(**_QUICKSTART_TOWER, attn_norm=True, global_pool="token", num_classes=64),
                      text=TextConfig(width=128, heads=4, layers=3, embed_dim=64, context_length=20)),
    description="quickstart EVA-CLIP (vision tower = eva02_quickstart_patch8_64; 3-layer text, context 20)",
))

# open_clip's CLIP models with a timm vision tower (ConvNeXt ...): rows in zoo_timm.py
for _row in TIMM_CLIP_ZOO:
    register_model(ModelSpec(**_row))

# open_clip's plain-ViT zoo (OpenAI / LAION / DFN / MetaCLIP CLIPs, SigLIP, SigLIP 2): rows in zoo_openclip.py
for _row in OPENCLIP_ZOO:
    register_model(ModelSpec(**_row))
