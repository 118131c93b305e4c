"""Parity with open_clip's EVA-CLIP models: random open_clip weights loaded into openeva give the same embeddings.

EVA02-B-16 runs in the default suite, EVA02-L-14 is slow. The tiny test models are compared with open_clip
``CustomTextCLIP`` builds whose timm trunk is the equivalent tiny ``Eva``, loaded through
``openeva.load_checkpoint`` from a file, and at a forced image size (open_clip resizes a timm tower with
``set_input_size``).
"""

from __future__ import annotations

import logging

import pytest
import torch

import openeva
from openeva.checkpoints.convert import detect_format, to_openeva

open_clip = pytest.importorskip("open_clip")

TOL = 1e-4
CAPTIONS = ["a photo of a cat", "two dogs playing in the snow at night", "an EVA-02 diagram", ""]


def _tokens(context_length: int = 77) -> torch.Tensor:
    return openeva.get_tokenizer(context_length=context_length)(CAPTIONS)  # (4, L)


def _images(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ours_from(ref, name: str, **kwargs):
    sd = ref.state_dict()
    with torch.device("meta"):
        ours = openeva.create_model(name, device="meta", **kwargs)
    ours.load_state_dict(to_openeva(sd, detect_format(sd), is_clip=True), strict=True, assign=True)
    return ours.eval()


@pytest.fixture(scope="module", params=["EVA02-B-16", pytest.param("EVA02-L-14", marks=pytest.mark.slow)])
def clip_pair(request, randomize):
    name = request.param
    root = logging.getLogger()
    level, _ = root.level, root.setLevel(logging.ERROR)  # open_clip warns that no pretrained weights were loaded
    try:
        torch.manual_seed(0)
        ref = randomize(open_clip.create_model(name)).eval()
    finally:
        root.setLevel(level)
    return name, ref, _ours_from(ref, name)


@torch.no_grad()
def test_published_clip_embeddings_match_open_clip(clip_pair, relative_difference):
    name, ref, ours = clip_pair
    size = ours.visual.cfg.img_size
    x = _images(1, 3, *size)
    img_ref, img_ours = ref.encode_image(x), ours.encode_image(x)
    assert img_ours.shape == img_ref.shape == (1, ours.embed_dim)
    assert relative_difference(img_ours, img_ref) < TOL
    text = _tokens()
    txt_ref, txt_ours = ref.encode_text(text), ours.encode_text(text)
    assert txt_ours.shape == (len(CAPTIONS), ours.embed_dim)
    assert relative_difference(txt_ours, txt_ref) < TOL
    torch.testing.assert_close(ours.logit_scale.exp(), ref.logit_scale.exp())


# ------------------------------------------------------------------------------ tiny open_clip builds
def _tiny_open_clip(name: str, monkeypatch, timm_twin, randomize):
    """open_clip's CustomTextCLIP around the tiny timm twin of ``name``'s tower, text as ``name``'s text tower."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    spec = openeva.get_model_spec(name)
    trunk = timm_twin(name)
    import open_clip.timm_model as oc_timm

    monkeypatch.setattr(oc_timm.timm, "create_model", lambda *args, **kwargs: trunk)  # open_clip wraps the twin
    t = spec.config.text
    ref = CustomTextCLIP(
        embed_dim=spec.config.embed_dim,
        vision_cfg=CLIPVisionCfg(timm_model_name="twin", timm_pool="token", timm_proj=None,
                                 image_size=spec.config.vision.img_size),
        text_cfg=CLIPTextCfg(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                             heads=t.heads, layers=t.layers),
    )
    monkeypatch.undo()
    assert ref.visual.trunk is trunk
    return randomize(ref, seed=3).eval()


@pytest.mark.parametrize("name", ["EVA02-test", "EVA02-E-test"])
@torch.no_grad()
def test_tiny_clip_models_match_open_clip_builds(name, tmp_path, monkeypatch, timm_twin, randomize,
                                                 relative_difference):
    ref = _tiny_open_clip(name, monkeypatch, timm_twin, randomize)
    torch.save(ref.state_dict(), tmp_path / "open_clip.bin")
    ours = openeva.create_model(name).eval()
    info = openeva.load_checkpoint(ours, tmp_path / "open_clip.bin")
    assert info["format"] == "open_clip" and info["missing"] == []
    x, text = _images(2, 3, 32, 32), _tokens()
    for a, b in zip(ours(x, text), ref(x, text)):  # normalised image, text features and logit scale
        assert relative_difference(a, b) < TOL


@torch.no_grad()
def test_force_image_size_matches_open_clip(monkeypatch, timm_twin, randomize, relative_difference):
    """open_clip's ``force_image_size`` on a timm tower is ``set_input_size`` after loading; ours rebuilds the
    model at that size. Given the same (resized) weights both agree, non-square included."""
    size = (40, 48)
    ref = _tiny_open_clip("EVA02-test", monkeypatch, timm_twin, randomize)
    ref.visual.set_input_size(size)
    ours = _ours_from(ref, "EVA02-test", force_image_size=size)
    assert ours.visual.cfg.img_size == size
    x = _images(2, 3, *size)
    assert relative_difference(ours.encode_image(x), ref.encode_image(x)) < TOL
