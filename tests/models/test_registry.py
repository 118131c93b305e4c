"""The registry: every published model has timm's / open_clip's parameter count, and the lookups behave.

Counts are taken on the meta device (no memory, no init), so even EVA02-E-14 (4.35B vision) is checked in the
default suite. A model counts as published when it has pretrained tags; the test and quickstart sizes do not.
"""

from __future__ import annotations

import logging

import pytest
import torch

import openeva
from openeva.models.registry import ModelSpec, get_model_spec, list_models, list_pretrained, register_model
from openeva.models.zoo_openclip import OPENCLIP_ZOO
from openeva.models.zoo_timm import TIMM_CLIP_ZOO

# open_clip's plain-ViT zoo (models/zoo_openclip.py) is checked key by key against open_clip in test_zoo_openclip.py
_ZOO = {row["name"] for row in OPENCLIP_ZOO + TIMM_CLIP_ZOO}  # timm / HF tower rows: tests/factory/test_timm_towers.py
PUBLISHED = [n for n in list_models() if get_model_spec(n).pretrained and n not in _ZOO]


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_build(name: str):
    with torch.device("meta"):
        return openeva.create_model(name, device="meta")


def test_published_set_is_what_eva_released():
    assert set(PUBLISHED) == {
        "eva02_tiny_patch14_224", "eva02_small_patch14_224", "eva02_base_patch14_224", "eva02_large_patch14_224",
        "eva02_tiny_patch14_336", "eva02_small_patch14_336", "eva02_base_patch14_448", "eva02_large_patch14_448",
        "EVA02-B-16", "EVA02-L-14", "EVA02-L-14-336", "EVA02-E-14", "EVA02-E-14-plus", "EVA01-g-14",
        "EVA01-g-14-plus",
    }


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count_equals_reference_library(name):
    spec = get_model_spec(name)
    ours = _meta_build(name)
    assert all(p.is_meta for p in ours.parameters())
    root = logging.getLogger()
    level, _ = root.level, root.setLevel(logging.ERROR)  # open_clip: "no pretrained weights loaded"
    try:
        with torch.device("meta"):
            if spec.is_clip:
                theirs = pytest.importorskip("open_clip").create_model(name, device="meta")
            else:
                theirs = pytest.importorskip("timm").create_model(name, num_classes=spec.config.num_classes)
    finally:
        root.setLevel(level)
    assert _count(ours) == _count(theirs)
    if spec.is_clip:
        assert _count(ours.visual) == _count(theirs.visual)
        assert _count(ours.text) == _count(theirs.text)


# Published millions (eva.md section 3, from the EVA-CLIP paper / open_clip). The paper rounds to 0.1M, so a
# 0.05M tolerance; its L/14+ vision figure (304.4M) counts the 336px position table, which ours has too.
PUBLISHED_MILLIONS = {
    "EVA02-B-16": (86.26, 63.43),  # open_clip 3.3 build: 149.69M in total
    "EVA02-L-14": (304.1, 123.65),
    "EVA02-L-14-336": (304.4, 123.65),
    "EVA02-E-14": (4350.6, 354.0),
    "EVA02-E-14-plus": (4350.6, 694.3),
    "EVA01-g-14": (1012.6, 123.8),
    "EVA01-g-14-plus": (1012.6, 354.0),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_parameter_counts_match_published_figures(name):
    vision, text = PUBLISHED_MILLIONS[name]
    model = _meta_build(name)
    assert _count(model.visual) / 1e6 == pytest.approx(vision, abs=0.05)
    assert _count(model.text) / 1e6 == pytest.approx(text, abs=0.05)


def test_b16_total_is_open_clips_149_69m():
    assert _count(_meta_build("EVA02-B-16")) / 1e6 == pytest.approx(149.69, abs=0.005)


@pytest.mark.parametrize("name,millions", [("eva02_tiny_patch14_224", 5.5), ("eva02_small_patch14_224", 21.6),
                                           ("eva02_base_patch14_224", 85.8), ("eva02_large_patch14_224", 303.3)])
def test_backbone_counts_match_the_eva02_paper(name, millions):
    assert _count(_meta_build(name)) / 1e6 == pytest.approx(millions, abs=0.05)


def test_every_registered_model_builds_on_meta():
    for name in list_models():
        model = _meta_build(name)
        assert all(p.is_meta for p in model.parameters()), name


def test_list_models_filters_by_kind():
    clips, backbones = list_models("clip"), list_models("backbone")
    assert "EVA02-B-16" in clips and "EVA02-B-16" not in backbones
    assert "eva02_base_patch14_224" in backbones and "eva02_base_patch14_224" not in clips
    assert sorted(clips + backbones) == list_models()
    with pytest.raises(ValueError, match="kind"):
        list_models("detector")


def test_unknown_name_is_refused_with_suggestions():
    with pytest.raises(ValueError, match="unknown model 'EVA02-B-17'"):
        get_model_spec("EVA02-B-17")
    with pytest.raises(ValueError, match="Did you mean .*eva02_base_patch14_224"):
        get_model_spec("eva02_base")
    with pytest.raises(ValueError, match="unknown model"):
        openeva.create_model("no-such-model")


def test_duplicate_registration_is_refused():
    spec = get_model_spec("eva02_test_patch8_32")
    with pytest.raises(ValueError, match="already registered"):
        register_model(ModelSpec(name=spec.name, config=spec.config))


def test_pretrained_tags_and_preprocessing():
    tags = dict(list_pretrained())
    assert tags["EVA02-B-16"] == "merged2b_s8b_b131k"
    assert ("eva02_large_patch14_224", "mim_m38m") in list_pretrained()
    spec = get_model_spec("EVA02-L-14-336")
    assert spec.is_clip and spec.image_size == (336, 336)
    cfg = spec.preprocess_cfg()
    assert cfg["size"] == (336, 336) and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert spec.preprocess_cfg((224, 256))["size"] == (224, 256)


@pytest.mark.parametrize("name,timm_name", [("EVA02-B-16", "eva02_base_patch16_clip_224"),
                                            ("EVA02-L-14", "eva02_large_patch14_clip_224"),
                                            ("EVA02-L-14-336", "eva02_large_patch14_clip_336"),
                                            ("EVA02-E-14", "eva02_enormous_patch14_clip_224"),
                                            ("EVA01-g-14", "eva_giant_patch14_clip_224")])
def test_pretrained_files_point_at_the_matching_timm_repositories(name, timm_name):
    for source in get_model_spec(name).pretrained.values():
        assert source.startswith(f"hf-hub:timm/{timm_name}.")
