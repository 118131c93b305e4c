"""Loading every supported checkpoint layout gives the reference network's outputs.

EVA native checkpoints are synthesized from timm weights by the reverse of the key mapping in eva.md section 4
(``w1/w2/w3/ffn_ln``, ``w12``, ``q_bias/v_bias`` beside ``q_proj/k_proj/v_proj``, ``inner_attn_ln``, stale rope
buffers, DeepSpeed ``module`` wrapping, MIM ``lm_head``/``mask_token``, EVA-CLIP's flat ``visual.``/``text.``
file), written with ``torch.save`` and read back with ``openeva.load_checkpoint``.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import openeva
from openeva.checkpoints import detect_format, to_openeva
from openeva.layers import resample_pos_embed

pytest.importorskip("timm")

TOL = 1e-5


def _images(n=2, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def timm_to_eva_native(sd: dict[str, torch.Tensor], swiglu: bool = True) -> dict[str, torch.Tensor]:
    """timm ``Eva`` names -> the official EVA code's names (the reverse of eva.md's table)."""
    out = {}
    for k, v in sd.items():
        k = k.replace(".attn.norm.", ".attn.inner_attn_ln.").replace(".mlp.norm.", ".mlp.ffn_ln.")
        k = re.sub(r"\.attn\.([qv])_proj\.bias$", r".attn.\1_bias", k)  # B/L: biases beside the projections
        if swiglu:
            k = (k.replace(".mlp.fc1_g.", ".mlp.w1.").replace(".mlp.fc1_x.", ".mlp.w2.")
                 .replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3."))
        out[k] = v.clone()
    # rope tables saved as buffers by the EVA code, in an older shape than today's (H*W, head_dim)
    out["rope.freqs_cos"] = torch.randn(16, 16, 64)
    out["rope.freqs_sin"] = torch.randn(16, 16, 64)
    for i in {int(m.group(1)) for k in out if (m := re.match(r"blocks\.(\d+)\.", k))}:
        out[f"blocks.{i}.attn.rope.freqs_cos"] = out["rope.freqs_cos"]
    return out


def mim_checkpoint(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An EVA-02 MIM student's state: its last LN is ``norm`` (timm: ``fc_norm``), plus mask token and lm_head."""
    out = {("norm." + k[len("fc_norm."):] if k.startswith("fc_norm.") else k): v for k, v in sd.items()}
    width = out["cls_token"].shape[-1]
    out["mask_token"] = torch.randn(1, 1, width)
    out["lm_head.weight"] = torch.randn(1024, width)
    out["lm_head.bias"] = torch.randn(1024)
    return out


def _text_state(seed=4) -> dict[str, torch.Tensor]:
    """A CLIP text tower's weights in open_clip / EVA-CLIP naming (+ the causal mask buffer EVA saves)."""
    torch.manual_seed(seed)
    sd = {f"text.{k}": v for k, v in openeva.create_model("EVA02-test").text.state_dict().items()}
    sd["text.attn_mask"] = torch.full((77, 77), float("-inf")).triu(1)
    return sd


def _text_tokens():
    return openeva.get_tokenizer(context_length=77)(["a photo of a cat", "a diagram"])


@pytest.mark.parametrize("name,swiglu_packed", [("eva02_test_patch8_32", False),
                                                ("eva02_test_packed_patch8_32", True)])
def test_eva_native_mim_deepspeed_checkpoint_loads_into_the_backbone(name, swiglu_packed, tmp_path, timm_twin):
    ref = timm_twin(name)
    native = mim_checkpoint(timm_to_eva_native(ref.state_dict()))
    assert any(".mlp.w12." in k for k in native) == swiglu_packed
    assert any(".attn.q_bias" in k for k in native) and not any(".q_proj.bias" in k for k in native)
    assert detect_format(native) == "eva"
    torch.save({"module": native, "epoch": 3}, tmp_path / "mp_rank_00_model_states.pt")

    model = openeva.create_model(name).eval()
    info = openeva.load_checkpoint(model, tmp_path / "mp_rank_00_model_states.pt")
    assert info["format"] == "eva" and info["missing"] == []
    assert any("norm -> fc_norm" in n for n in info["notes"])
    assert any("lm_head.weight" in n for n in info["notes"]) and any("mask_token" in n for n in info["notes"])
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=TOL, atol=TOL)


def test_eva_native_mim_checkpoint_keeps_mask_token_and_lm_head_for_a_mim_student(tmp_path, timm_twin):
    """A model that has a mask token takes it from the checkpoint instead of dropping it."""
    ref = timm_twin("eva02_test_patch8_32")
    native = mim_checkpoint(timm_to_eva_native(ref.state_dict()))
    del native["lm_head.weight"], native["lm_head.bias"]
    torch.save({"module": native}, tmp_path / "mim.pt")
    model = openeva.create_model("eva02_test_patch8_32", mask_token=True)
    openeva.load_checkpoint(model, tmp_path / "mim.pt")
    torch.testing.assert_close(model.mask_token.detach(), native["mask_token"])


@pytest.mark.parametrize("name,swiglu", [("EVA02-test", True), ("EVA02-E-test", False)])
def test_eva_clip_flat_checkpoint_loads_into_the_clip_model(name, swiglu, tmp_path, timm_twin):
    ref_visual = timm_twin(name)
    sd = {f"visual.{k}": v for k, v in timm_to_eva_native(ref_visual.state_dict(), swiglu=swiglu).items()}
    sd.update(_text_state())
    sd["logit_scale"] = torch.tensor(4.0)
    assert detect_format(sd) == "eva_clip"
    torch.save(sd, tmp_path / "EVA02_CLIP_test_psz8.pt")

    model = openeva.create_model(name).eval()
    info = openeva.load_checkpoint(model, tmp_path / "EVA02_CLIP_test_psz8.pt")
    assert info["format"] == "eva_clip" and info["missing"] == []
    assert model.logit_scale.item() == 4.0
    x, text = _images(), _text_tokens()
    reference_text = openeva.create_model(name).eval()
    reference_text.text.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("text.")
                                         and k != "text.attn_mask"})
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), ref_visual(x), rtol=TOL, atol=TOL)
        torch.testing.assert_close(model.encode_text(text), reference_text.encode_text(text))


@pytest.mark.parametrize("name", ["EVA02-test", "EVA02-E-test"])
def test_open_clip_state_dict_loads(name, tmp_path, timm_twin):
    ref_visual = timm_twin(name)
    sd = {f"visual.trunk.{k}": v for k, v in ref_visual.state_dict().items()}
    sd.update(_text_state())
    sd["logit_scale"] = torch.tensor(3.0)
    assert detect_format(sd) == "open_clip"
    torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
    model = openeva.create_model(name).eval()
    assert openeva.load_checkpoint(model, tmp_path / "open_clip_pytorch_model.bin")["format"] == "open_clip"
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(_images()), ref_visual(_images()), rtol=TOL, atol=TOL)

    # a CLIP checkpoint loaded into a bare backbone gives the vision tower (EVA-CLIP towers as backbones)
    tower = openeva.create_model("EVA02-test").visual if name == "EVA02-test" else None
    if tower is not None:
        openeva.load_checkpoint(tower, tmp_path / "open_clip_pytorch_model.bin")
        with torch.no_grad():
            torch.testing.assert_close(tower(_images()), ref_visual(_images()), rtol=TOL, atol=TOL)


def test_timm_safetensors_and_training_wrappers(tmp_path, timm_twin):
    from safetensors.torch import save_file

    ref = timm_twin("eva02_test_patch8_32")
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    model = openeva.create_model("eva02_test_patch8_32").eval()
    assert openeva.load_checkpoint(model, tmp_path / "model.safetensors")["format"] == "timm"
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=TOL, atol=TOL)

    # timm training checkpoints: model_ema is preferred over model, a nested state_dict is found
    other = timm_twin("eva02_test_patch8_32", seed=9)
    torch.save({"model": other.state_dict(), "model_ema": {"state_dict": ref.state_dict()}, "epoch": 1},
               tmp_path / "checkpoint.pth.tar")
    model = openeva.create_model("eva02_test_patch8_32").eval()
    openeva.load_checkpoint(model, tmp_path / "checkpoint.pth.tar")
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=TOL, atol=TOL)


def test_patch14_backbone_into_patch16_clip_tower_resamples_kernel_and_grid(tmp_path, timm_twin):
    """The EVA02-CLIP-B/16 recipe at toy size: a patch-7 MIM backbone on a 8x8 grid (56 px) initialises a patch-8
    tower on a 7x7 grid; the kernel and the position grid are resampled bicubically (EVA's conversion)."""
    src = timm_twin("eva02_test_patch8_32", patch_size=7, img_size=56, ref_feat_shape=(8, 8))
    native = mim_checkpoint(timm_to_eva_native(src.state_dict()))
    torch.save({"module": native}, tmp_path / "mim_p7.pt")
    clip = openeva.create_model("EVA02-test", force_image_size=56)
    info = openeva.load_checkpoint(clip.visual, tmp_path / "mim_p7.pt",
                                   ignore_missing=("blocks.*.attn.norm.*", "head.*"))
    assert set(info["missing"]) == {"head.weight", "head.bias"} | {
        f"blocks.{i}.attn.norm.{p}" for i in range(2) for p in ("weight", "bias")}
    assert any("patch kernel to 8px" in n for n in info["notes"])
    assert any("7x7" in n for n in info["notes"])
    kernel = F.interpolate(native["patch_embed.proj.weight"], size=(8, 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(clip.visual.patch_embed.proj.weight.detach(), kernel)
    torch.testing.assert_close(clip.visual.pos_embed.detach(), resample_pos_embed(native["pos_embed"], (7, 7), (8, 8)))
    torch.testing.assert_close(clip.visual.norm.weight.detach(), native["norm.weight"])  # MIM norm -> tower norm
    with torch.no_grad():
        assert torch.isfinite(clip.encode_image(_images(size=56))).all()


@pytest.mark.slow
def test_real_size_eva02_base_mim_into_the_b16_clip_tower(tmp_path):
    timm = pytest.importorskip("timm")
    from openeva.models import EVAViT

    src = timm.create_model("eva02_base_patch14_224", num_classes=0)
    torch.save({"module": mim_checkpoint(timm_to_eva_native(src.state_dict()))}, tmp_path / "b14.pt")
    del src
    tower = EVAViT(openeva.get_model_spec("EVA02-B-16").config.vision)  # the B/16 CLIP vision tower
    openeva.load_checkpoint(tower, tmp_path / "b14.pt", ignore_missing=("blocks.*.attn.norm.*", "head.*"))
    assert tower.patch_embed.proj.weight.shape == (768, 3, 16, 16)
    assert tower.pos_embed.shape == (1, 1 + 14 * 14, 768)
    with torch.no_grad():
        assert tower(torch.randn(1, 3, 224, 224)).shape == (1, 512)


def test_conversion_is_idempotent_on_openeva_names(timm_twin):
    sd = to_openeva(timm_twin("EVA02-test").state_dict(), "timm", is_clip=False)
    again = to_openeva(sd, detect_format(sd), is_clip=False)
    assert again.keys() == sd.keys()
    assert all(torch.equal(again[k], v) for k, v in sd.items())


def test_openeva_clip_state_dict_in_a_torch_file_loads(tmp_path, randomize):
    torch.manual_seed(0)
    src = randomize(openeva.create_model("EVA02-test")).eval()
    torch.save(src.state_dict(), tmp_path / "ours.pt")
    assert detect_format(src.state_dict()) == "openeva_clip"
    dst = openeva.create_model("EVA02-test").eval()
    openeva.load_checkpoint(dst, tmp_path / "ours.pt")
    text = _text_tokens()
    with torch.no_grad():
        torch.testing.assert_close(dst(_images(), text)[0], src(_images(), text)[0])


def test_backbone_checkpoint_into_a_clip_model_is_refused(tmp_path, timm_twin):
    torch.save(timm_twin("EVA02-test").state_dict(), tmp_path / "tower.pth")
    with pytest.raises(ValueError, match="has no text tower.*visual"):
        openeva.load_checkpoint(openeva.create_model("EVA02-test"), tmp_path / "tower.pth")
