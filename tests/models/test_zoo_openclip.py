"""open_clip's plain-ViT zoo (OpenAI-style CLIPs, SigLIP, SigLIP 2) built by openeva: layouts and outputs against
open_clip itself (the oracle) on the same random weights.

- Every registered zoo name: open_clip's model built on the meta device, its state dict converted by openeva's
  converter, keys and shapes equal to openeva's model of the same name (also built on the meta device).
- Numeric parity on shrunken models of each family: open_clip's own ``CLIP`` / ``CustomTextCLIP`` classes built
  from a small config (timm's SigLIP trunk shrunk through the kwargs timm's model functions accept), every
  weight randomised, saved as a checkpoint file, loaded by openeva's loader, outputs compared in fp32.
- Full size ViT-B-32 through ``openeva.create_model(name, pretrained=file)`` in a slow test.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("timm")

import openeva
from openeva.checkpoints import load_checkpoint
from openeva.checkpoints.convert import detect_format, to_openeva
from openeva.models.clip import CLIP, CLIPConfig
from openeva.models.registry import get_model_spec, list_models
from openeva.models.zoo_openclip import OPENCLIP_ZOO, openai_text, openai_vision, siglip_text, siglip_vision

ZOO_NAMES = [row["name"] for row in OPENCLIP_ZOO]
ATOL = 1e-5


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


# ------------------------------------------------------------------------------------------ layouts
def _open_clip_on_meta(name: str) -> torch.nn.Module:
    """open_clip's model for ``name`` from open_clip's own config and classes, parameters on the meta device
    (``open_clip.create_model(device="meta")`` builds the same modules but takes ~1 min for bigG on 2 cores)."""
    cfg = dict(open_clip.get_model_config(name))
    cls = open_clip.model.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.model.CLIP
    with torch.device("meta"):
        return cls(**cfg)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_layout_matches_open_clip(name):
    assert name in open_clip.list_models(), f"{name} is not an open_clip name"
    ref = _open_clip_on_meta(name)
    converted = to_openeva(ref.state_dict(), detect_format(ref.state_dict()), is_clip=True)
    model = openeva.create_model(name, device="meta")
    assert _shapes(converted) == _shapes(model.state_dict())
    ctx = ref.context_length if hasattr(ref, "context_length") else ref.text.context_length
    assert model.context_length == ctx
    assert (model.logit_bias is not None) == (getattr(ref, "logit_bias", None) is not None)


def test_zoo_preprocessing_follows_open_clip_pretrained_configs():
    from open_clip.pretrained import get_pretrained_cfg

    for name in ZOO_NAMES:
        spec = get_model_spec(name)
        for tag, source in spec.pretrained.items():
            cfg = get_pretrained_cfg(name, tag)
            assert cfg, f"{name}:{tag} is not an open_clip tag"
            assert source.startswith(f"hf-hub:{cfg['hf_hub'].rstrip('/')}/"), (name, tag, source)
            assert tuple(spec.mean) == tuple(cfg["mean"]) and tuple(spec.std) == tuple(cfg["std"]), (name, tag)
            assert spec.interpolation == cfg["interpolation"] and spec.resize_mode == cfg["resize_mode"], (name, tag)
            quick = get_model_spec(name).config.vision.mlp_act == "quick_gelu"
            if not spec.config.vision.class_token:  # SigLIP: timm's activation, not open_clip's quick_gelu flag
                continue
            assert quick == bool(cfg.get("quick_gelu", False)), f"{name}:{tag} needs quick_gelu={not quick}"


def test_registry_lists_the_zoo_with_siglip_preprocessing():
    clip_names = set(list_models("clip"))
    assert {"ViT-B-32", "ViT-B-32-quickgelu", "ViT-L-14", "ViT-H-14", "ViT-bigG-14", "ViT-B-16-SigLIP",
            "ViT-SO400M-14-SigLIP", "ViT-B-16-SigLIP2", "ViT-SO400M-14-SigLIP2"} <= clip_names
    pre = get_model_spec("ViT-B-16-SigLIP").preprocess_cfg()
    assert pre["resize_mode"] == "squash" and pre["mean"] == (0.5, 0.5, 0.5)
    assert get_model_spec("ViT-B-32").preprocess_cfg()["resize_mode"] == "shortest"


# --------------------------------------------------------------------------------- shrunken parity
def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter gets noise, so zero-initialised biases and unit LayerNorms are checked too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("logit_scale", "logit_bias"):
                p.add_(0.1)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


OPENAI_SMALL = dict(embed_dim=32, vision=dict(image_size=32, layers=2, width=64, head_width=32, patch_size=8),
                    text=dict(context_length=16, vocab_size=100, width=64, heads=2, layers=2))


def _openai_pair(quick_gelu: bool):
    v, t, e = OPENAI_SMALL["vision"], OPENAI_SMALL["text"], OPENAI_SMALL["embed_dim"]
    ref = open_clip.model.CLIP(embed_dim=e, vision_cfg=dict(v), text_cfg=dict(t), quick_gelu=quick_gelu)
    cfg = CLIPConfig(
        embed_dim=e,
        vision=openai_vision(v["width"], v["layers"], v["width"] // v["head_width"], 4 * v["width"], v["patch_size"],
                             v["image_size"], e, quick_gelu),
        text=openai_text(t["width"], t["heads"], t["layers"], e, quick_gelu).replace(
            context_length=t["context_length"], vocab_size=t["vocab_size"]),
    )
    return ref, cfg


# family -> (timm trunk overrides, open_clip text cfg extras, openeva text kwargs)
SIGLIP_FAMILIES = {
    "siglip": ("vit_base_patch16_siglip_224", {}, {}, dict(act="gelu", proj="linear"), "gelu"),
    "siglip2": ("vit_base_patch32_siglip_256", {"act_layer": "gelu_tanh"}, {"act_kwargs": {"approximate": "tanh"}},
                dict(act="gelu_tanh", proj="linear"), "gelu_tanh"),
    "siglip_i18n_noproj": ("vit_so400m_patch16_siglip_256", {"act_layer": "gelu_tanh"}, {"proj_type": "none"},
                           dict(act="gelu", proj="none"), "gelu_tanh"),
}


def _siglip_pair(family: str, monkeypatch):
    timm_name, trunk_kw, text_extra, text_kw, vision_act = SIGLIP_FAMILIES[family]
    import open_clip.timm_model as tm

    real_create = tm.timm.create_model
    small = dict(embed_dim=64, depth=2, num_heads=2, img_size=32, patch_size=8, mlp_ratio=3.0, **trunk_kw)
    monkeypatch.setattr(tm.timm, "create_model", lambda name, **kw: real_create(name, **{**kw, **small}))
    text = dict(context_length=12, vocab_size=120, width=64, heads=2, layers=2, mlp_ratio=3.7362, no_causal_mask=True,
                proj_bias=True, pool_type="last", norm_kwargs={"eps": 1e-6}, **text_extra)
    ref = open_clip.model.CustomTextCLIP(
        embed_dim=64, vision_cfg=dict(image_size=32, timm_model_name=timm_name, timm_model_pretrained=False,
                                      timm_pool="map", timm_proj="none"),
        text_cfg=text, init_logit_scale=math.log(10), init_logit_bias=-10)
    cfg = CLIPConfig(
        embed_dim=64,
        vision=siglip_vision(8, 64, 2, 2, 192, 32, vision_act),
        text=siglip_text(64, 2, 2, 3.7362, 120, 12, embed=64, **text_kw),
        init_logit_scale=math.log(10), init_logit_bias=-10.0,
    )
    return ref, cfg


def _tokens(vocab: int, length: int, eot_last: bool, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab - 1, (3, length), generator=g)
    if eot_last:  # CLIP: EOT (the highest id) then padding zeros, at a different position per row
        for row, end in enumerate((3, 7, length - 1)):
            ids[row, end] = vocab - 1
            ids[row, end + 1:] = 0
    return ids


def _compare(ref, model, images, tokens) -> None:
    ref.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), ref.encode_image(images), atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(model.encode_text(tokens), ref.encode_text(tokens), atol=ATOL, rtol=1e-4)
        ours, theirs = model(images, tokens), ref(images, tokens)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)
        for a, b in zip(model.get_logits(images, tokens), ref.get_logits(images, tokens)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quickgelu"])
def test_openai_family_parity_on_shrunken_model(tmp_path, quick_gelu):
    torch.manual_seed(0)
    ref, cfg = _openai_pair(quick_gelu)
    _randomise(ref)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    model = CLIP(cfg)
    report = load_checkpoint(model, path)  # strict: every key converted, none left over
    assert report["format"] == "openai_clip"
    images = torch.randn(2, 3, 32, 32)
    _compare(ref, model, images, _tokens(100, 16, eot_last=True))
    assert len(model(images, _tokens(100, 16, True))) == 3  # no logit bias: open_clip's 3-tuple


@pytest.mark.parametrize("family", sorted(SIGLIP_FAMILIES))
def test_siglip_family_parity_on_shrunken_model(tmp_path, monkeypatch, family):
    torch.manual_seed(0)
    ref, cfg = _siglip_pair(family, monkeypatch)
    _randomise(ref)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    model = CLIP(cfg)
    report = load_checkpoint(model, path)
    assert report["format"] == "open_clip"
    images = torch.randn(2, 3, 32, 32)
    tokens = _tokens(120, 12, eot_last=False)
    _compare(ref, model, images, tokens)
    out = model(images, tokens)
    assert len(out) == 4 and out[3].item() == pytest.approx(-10.0 + 0.1)


def test_openai_checkpoint_via_create_model_and_save_round_trip(tmp_path):
    """The factory path: a registered (test-only) OpenAI-layout row, pretrained=<open_clip file>, then openeva's own
    save / reload keeps the outputs."""
    from openeva.models.registry import ModelSpec, register_model

    torch.manual_seed(0)
    ref, cfg = _openai_pair(quick_gelu=True)
    _randomise(ref, seed=3)
    name = "ViT-test-openai-layout"
    if name not in list_models():
        register_model(ModelSpec(name=name, config=cfg, description="test: shrunken OpenAI-layout CLIP"))
    path = tmp_path / "ref.pt"
    torch.save({"state_dict": ref.state_dict()}, path)
    model = openeva.create_model(name, pretrained=str(path))
    images, tokens = torch.randn(2, 3, 32, 32), _tokens(100, 16, True)
    _compare(ref, model, images, tokens)
    from openeva.factory.create import save_model

    save_model(model, tmp_path / "saved")
    again = openeva.create_model(str(tmp_path / "saved"))
    _compare(ref, again, images, tokens)


def test_key_bias_is_dropped_exactly():
    """The converter drops the attention key bias; it shifts each query's scores by a constant, so outputs do
    not move (checked with a large key bias)."""
    torch.manual_seed(0)
    ref, cfg = _openai_pair(quick_gelu=False)
    _randomise(ref)
    sd = ref.state_dict()
    model = CLIP(cfg)
    model.load_state_dict(to_openeva(sd, "openai_clip", True))
    big = copy.deepcopy(ref)
    with torch.no_grad():
        for blk in big.visual.transformer.resblocks:
            D = blk.attn.in_proj_bias.shape[0] // 3
            blk.attn.in_proj_bias[D:2 * D] += 3.0
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), big.encode_image(images), atol=ATOL, rtol=1e-4)


def test_unsupported_openai_tower_options_are_refused():
    from openeva.checkpoints.openclip_zoo import openai_vision_to_openeva

    with pytest.raises(ValueError, match="layer scale"):
        openai_vision_to_openeva({"transformer.resblocks.0.ls_1.gamma": torch.zeros(4)})


# ------------------------------------------------------------------------------------------- full size
@pytest.mark.slow
def test_vit_b_32_full_size_parity(tmp_path):
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32")
    _randomise(ref)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    model = openeva.create_model("ViT-B-32", pretrained=str(path))
    images = torch.randn(2, 3, 224, 224)
    _compare(ref, model, images, _tokens(49408, 77, True))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_options_match_open_clip_config(name):
    """What shapes cannot show: activations, causality, pooling, projection type, LayerNorm eps."""
    import timm

    oc = open_clip.get_model_config(name)
    vc, tc = oc["vision_cfg"], oc["text_cfg"]
    cfg = get_model_spec(name).config
    quick = bool(oc.get("quick_gelu", False))
    text_act = "gelu_tanh" if (tc.get("act_kwargs") or {}).get("approximate") == "tanh" else (
        "quick_gelu" if quick else "gelu")
    assert cfg.text.act == text_act
    assert cfg.text.causal == (not tc.get("no_causal_mask", False))
    assert cfg.text.pool == tc.get("pool_type", "argmax")
    proj = "none" if tc.get("proj_type") == "none" else ("linear" if tc.get("proj_bias") else "matrix")
    assert cfg.text.proj == proj
    assert cfg.text.norm_eps == (tc.get("norm_kwargs") or {}).get("eps", 1e-5)
    assert cfg.init_logit_bias == oc.get("init_logit_bias")
    if "timm_model_name" in vc:  # SigLIP: the activation and eps of timm's model of that name
        with torch.device("meta"):
            trunk = timm.create_model(vc["timm_model_name"], num_classes=0)
        act = trunk.blocks[0].mlp.act  # nn.GELU, or timm's GELUTanh (F.gelu(x, approximate="tanh"))
        tanh = type(act).__name__ == "GELUTanh" or getattr(act, "approximate", "none") == "tanh"
        assert "GELU" in type(act).__name__ and cfg.vision.mlp_act == ("gelu_tanh" if tanh else "gelu")
        assert cfg.vision.norm_eps == trunk.norm.eps and not cfg.vision.class_token
        assert cfg.vision.img_size == tuple(trunk.patch_embed.img_size)
    else:
        assert cfg.vision.mlp_act == ("quick_gelu" if quick else "gelu")
        assert cfg.vision.norm_pre and not cfg.vision.head_bias and cfg.vision.norm_eps == 1e-5


@pytest.mark.parametrize("name", [n for n in ZOO_NAMES if "SigLIP" in n])
def test_siglip_tokenizer_source_follows_open_clip(name):
    from openeva.models.zoo_openclip import tokenizer_kwargs

    tc = open_clip.get_model_config(name)["text_cfg"]
    kw = tokenizer_kwargs(name)
    assert kw["source"] == tc["hf_tokenizer_name"] and kw["clean"] == tc["tokenizer_kwargs"]["clean"]
    assert kw["context_length"] == tc["context_length"] == get_model_spec(name).config.text.context_length
    assert get_model_spec(name).tokenizer.to_dict() == {**get_model_spec(name).tokenizer.to_dict(), **kw}


# ------------------------------------------------------------------------- the new ViT / text options
def test_siglip_style_vit_backbone_hooks():
    """No class token + attention pooling: token shapes, intermediates, grad checkpointing, another resolution."""
    from openeva.models.vit import EVAViT

    torch.manual_seed(0)
    vit = EVAViT(siglip_vision(8, 64, 2, 2, 128, 32, "gelu_tanh")).eval()
    assert vit.num_prefix_tokens == 0 and vit.cls_token is None
    x = torch.randn(2, 3, 32, 32)
    assert vit.forward_features(x).shape == (2, 16, 64)  # (B, N, D): patches only
    assert vit(x).shape == (2, 64)
    assert [t.shape for t in vit.forward_intermediates(x, 2)] == [(2, 64, 4, 4)] * 2
    vit.train()
    ref = vit(x)
    vit.set_grad_checkpointing(True)
    torch.testing.assert_close(vit(x), ref)
    tall = openeva.create_model("ViT-B-16-SigLIP", device="meta", img_size=(256, 224)).visual
    assert tall.pos_embed.shape == (1, 16 * 14, 768)


def test_config_errors_name_the_option():
    from openeva.models.text import TextConfig
    from openeva.models.vit import ViTConfig

    base = dict(embed_dim=64, depth=1, num_heads=2, mlp_hidden=128, patch_size=8, img_size=32, mlp="gelu", rope=False)
    with pytest.raises(ValueError, match="class_token"):
        ViTConfig(**base, global_pool="token", class_token=False)
    with pytest.raises(ValueError, match="mlp_act"):
        ViTConfig(**base, mlp_act="relu")
    with pytest.raises(ValueError, match="pool"):
        TextConfig(width=64, heads=2, layers=1, embed_dim=64, pool="mean")
    with pytest.raises(ValueError, match="proj='none'"):
        TextConfig(width=64, heads=2, layers=1, embed_dim=32, proj="none")
    with pytest.raises(ValueError, match="vision head dim"):
        CLIPConfig(embed_dim=32, vision=siglip_vision(8, 64, 1, 2, 128, 32, "gelu"),
                   text=TextConfig(width=64, heads=2, layers=1, embed_dim=32))


def test_eos_and_first_pooling_follow_open_clip():
    from open_clip.transformer import text_global_pool

    from openeva.models.text import TextConfig, TextTransformer

    torch.manual_seed(0)
    x = torch.randn(3, 10, 8)
    text = torch.randint(3, 50, (3, 10))
    text[0, 4] = text[1, 9] = 2
    for pool in ("first", "last", "argmax", "eos"):
        tower = TextTransformer(TextConfig(width=8, heads=2, layers=1, embed_dim=8, vocab_size=50, pool=pool))
        torch.testing.assert_close(tower._pool(x, text), text_global_pool(x, text, pool, eos_token_id=2))
