"""The one builder with timm towers: registered ConvNeXt CLIPs (keys and shapes as open_clip's), the naming rule
(``convnext_base`` = open_clip's CLIP, ``timm:convnext_base`` = timm's backbone), the ``timm_name`` override,
open_clip checkpoints loaded under the MODEL policy, saved models rebuilt, and 2 training steps."""

import json

import open_clip
import pytest
import torch
from open_clip.model import CLIP as OpenClipCLIP

import openeva
from openeva.checkpoints import CheckpointMismatchError
from openeva.factory import create_model, get_tokenizer, save_model
from openeva.models.registry import get_model_spec, list_models
from openeva.models.timm_tower import TimmTower, TimmTowerConfig
from openeva.models.tokenizer import ClipTokenizer
from openeva.models.zoo_timm import TIMM_CLIP_ZOO

CONVNEXT_ROWS = [r["name"] for r in TIMM_CLIP_ZOO if r["name"].startswith("convnext_")]


def _shapes(sd, drop=("attn_mask",)):
    return {k: tuple(v.shape) for k, v in sd.items() if k.rsplit(".", 1)[-1] not in drop}


def _open_clip_as_openeva_keys(sd):
    """open_clip's plain CLIP keeps its text tower at the top level; openeva's under ``text.``."""
    return {(k if k.startswith(("visual.", "logit_")) else f"text.{k}"): v for k, v in sd.items()}


@pytest.mark.parametrize("name", CONVNEXT_ROWS)
def test_every_convnext_clip_has_open_clips_keys_and_shapes(name):
    with torch.device("meta"):
        theirs = open_clip.create_model(name, device="meta")
    ours = create_model(name, device="meta")
    assert _shapes(ours.state_dict()) == _shapes(_open_clip_as_openeva_keys(theirs.state_dict()))
    assert ours.visual.cfg.img_size == (theirs.visual.image_size[0],) * 2
    spec = get_model_spec(name)
    assert spec.is_clip and spec.preprocess_cfg()["size"] == ours.visual.cfg.img_size


def test_registered_convnext_rows_carry_open_clips_tags():
    spec = get_model_spec("convnext_base_w")
    assert set(spec.pretrained) == {"laion2b_s13b_b82k", "laion2b_s13b_b82k_augreg", "laion_aesthetic_s13b_b82k"}
    assert spec.pretrained["laion2b_s13b_b82k"] == \
        "hf-hub:laion/CLIP-convnext_base_w-laion2B-s13B-b82K/open_clip_pytorch_model.bin"
    assert set(CONVNEXT_ROWS) <= set(list_models("clip"))


def test_naming_rule_clip_name_versus_timm_backbone():
    clip = get_model_spec("convnext_base")  # open_clip's name: the CLIP model
    assert clip.is_clip and isinstance(clip.config.vision, TimmTowerConfig)
    backbone = get_model_spec("timm:convnext_base")  # timm's backbone, always
    assert not backbone.is_clip and backbone.config.timm_name == "convnext_base"
    assert backbone.config.embed_dim == 1000 and backbone.name == "timm:convnext_base"
    assert "timm:convnext_base" not in list_models()  # resolved on use, not listed
    model = create_model("timm:test_convnext", img_size=64)
    assert isinstance(model, TimmTower) and model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    assert create_model("timm:test_convnext", num_classes=7, img_size=64)(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    with pytest.raises(ValueError, match="unknown timm model"):
        get_model_spec("timm:convnext_nonesuch")
    with pytest.raises(ValueError, match="timm:"):
        create_model("timm/convnext_tiny")


def test_a_timm_backbone_loads_timms_own_state_dict(tmp_path):
    import timm

    ref = timm.create_model("test_convnext").eval()
    path = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), path)
    model = create_model("timm:test_convnext", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-6)


def test_timm_name_swaps_the_vision_tower():
    model = create_model("EVA02-test", timm_name="test_convnext", timm_pool="avg", timm_proj="mlp")
    v = model.visual
    assert isinstance(v, TimmTower) and v.cfg.embed_dim == model.embed_dim and v.cfg.img_size == (32, 32)
    assert v.cfg.proj == "mlp" and model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, model.embed_dim)
    with pytest.raises(ValueError, match="need timm_name"):
        create_model("EVA02-test", timm_pool="avg")
    with pytest.raises(ValueError, match="is a backbone"):
        create_model("eva02_test_patch8_32", timm_name="test_convnext")


def test_open_clip_checkpoint_loads_and_saved_models_rebuild(tmp_path):
    torch.manual_seed(0)
    oc = OpenClipCLIP(32, dict(image_size=64, timm_model_name="test_convnext", timm_pool="", timm_proj="linear"),
                      dict(width=64, heads=2, layers=2)).eval()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(oc.state_dict(), path)
    ours = create_model("convnext-test", pretrained=str(path)).eval()
    x, text = torch.randn(2, 3, 64, 64), get_tokenizer("convnext-test")(["a cat", "a dog"])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(x), oc.encode_image(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.encode_text(text), oc.encode_text(text), rtol=0, atol=1e-6)
    out = save_model(ours, tmp_path / "saved")
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_config"]["vision"]["kind"] == "timm"
    again = create_model(str(out)).eval()
    assert isinstance(again.visual, TimmTower)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), ours.encode_image(x), rtol=0, atol=0)
    # a checkpoint of another tower is refused under the MODEL policy, naming the keys
    bad = {k: v for k, v in oc.state_dict().items() if not k.startswith("visual.head.")}
    torch.save(bad, tmp_path / "bad.bin")
    with pytest.raises(CheckpointMismatchError, match="visual.head.proj.weight"):
        create_model("convnext-test", pretrained=str(tmp_path / "bad.bin"))


def test_a_timm_vit_tower_checkpoint_loads_at_another_resolution(tmp_path):
    vit = openeva.models.clip.CLIP(openeva.models.clip.CLIPConfig(
        embed_dim=32, vision=TimmTowerConfig("test_vit", 32, img_size=64, pool="token"),
        text=openeva.models.text.TextConfig(width=32, heads=2, layers=1, embed_dim=32)))
    vit.spec = get_model_spec("convnext-test")
    out = save_model(vit, tmp_path / "vit64")
    bigger = create_model(str(out), img_size=96)
    assert bigger.visual.trunk.patch_embed.grid_size == (6, 6)
    assert bigger.encode_image(torch.randn(1, 3, 96, 96)).shape == (1, 32)


def test_the_tokenizer_of_a_registered_timm_clip():
    tok = get_tokenizer("convnext_base")
    assert isinstance(tok, ClipTokenizer) and tok.context_length == 77


@pytest.mark.slow
def test_full_size_convnext_base_equals_open_clip(tmp_path):
    torch.manual_seed(0)
    oc = open_clip.create_model("convnext_base").eval()  # random weights, open_clip's own init
    path = tmp_path / "convnext_base.bin"
    torch.save(oc.state_dict(), path)
    ours = create_model("convnext_base", pretrained=str(path)).eval()
    x = torch.randn(2, 3, 224, 224)
    text = get_tokenizer("convnext_base")(["a photo of a cat", "a diagram"])
    assert torch.equal(text, open_clip.get_tokenizer("convnext_base")(["a photo of a cat", "a diagram"]))
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(x), oc.encode_image(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.encode_text(text), oc.encode_text(text), rtol=1e-5, atol=1e-5)


def test_timm_towers_fine_tune_as_classifiers(tmp_path):
    from openeva.factory import build_classifier
    from openeva.train.finetune_task import FinetuneTask, layer_lr_scales

    clf = build_classifier("convnext-test", 3)  # the CLIP model's timm tower with a new 3-class head
    assert isinstance(clf, TimmTower) and clf.num_classes == 3 and clf.cfg.proj_bias
    assert clf(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert clf.head.proj.weight.abs().max() < 1e-3  # EVA-02's small head init
    task = FinetuneTask(clf, 3, layer_decay=0.8)
    loss, _ = task((torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])))
    loss.backward()
    assert clf.head.proj.weight.grad is not None
    scales = layer_lr_scales(clf, 0.8)
    assert scales["head.proj.weight"] == 1.0 and scales["trunk.stem.0.weight"] == pytest.approx(0.8 ** (clf.num_layers - 1))
    saved = save_model(clf, tmp_path / "clf")  # the classifier rebuilds from its saved config
    again = create_model(str(saved))
    assert isinstance(again, TimmTower) and again.num_classes == 3
    backbone = build_classifier("timm:test_convnext", 5, img_size=64)
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_a_timm_tower_clip_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from openeva.export.onnx import export_onnx

    report = export_onnx(create_model("convnext-test").eval(), tmp_path)
    assert (tmp_path / report["graphs"]["image"]["file"]).is_file()
    assert report["parity"]["image"] and all(c["ok"] for c in report["parity"]["image"])  # onnxruntime == torch
