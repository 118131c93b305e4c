"""timm backbones as CLIP vision towers: outputs equal to open_clip's ``timm_model_name`` towers on the same
(random) weights for each pooling / projection choice, and the trainer's and the dense code's hooks."""

import pytest
import torch
from open_clip.model import CLIP as OpenClipCLIP

from openeva.models.clip import CLIP, CLIPConfig
from openeva.models.text import TextConfig
from openeva.models.timm_tower import TimmTower, TimmTowerConfig

TEXT = dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1)


def _pair(name, pool, proj, size, embed=32, **extra):
    """(open_clip CLIP, openeva CLIP) with the same timm tower, open_clip's weights loaded into openeva's."""
    torch.manual_seed(0)
    oc = OpenClipCLIP(embed, dict(image_size=size, timm_model_name=name, timm_model_pretrained=False, timm_pool=pool,
                                  timm_proj=proj, **extra), TEXT).eval()
    cfg = CLIPConfig(embed_dim=embed,
                     vision=TimmTowerConfig(name, embed, img_size=size, pool=pool, proj=proj,
                                            proj_bias=extra.get("timm_proj_bias", False)),
                     text=TextConfig(width=32, heads=2, layers=1, embed_dim=embed, context_length=16, vocab_size=100))
    ours = CLIP(cfg).eval()
    sd = oc.state_dict()
    ours.visual.load_state_dict({k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}, strict=True)
    return oc, ours


@pytest.mark.parametrize("name,pool,proj,size,embed", [
    ("test_convnext", "", "linear", 64, 32),  # the LAION ConvNeXt CLIPs' choice
    ("test_convnext", "avg", "mlp", 64, 32),  # convnext_large_d's MLP projection
    ("test_convnext", "abs_attn", "", 64, 32),  # attention pool (RN50-style), no extra projection
    ("test_convnext", "", "none", 64, 64),  # no pool, no projection: the feature map itself
    ("test_vit", "token", "none", 160, 64),  # SigLIP-style: the trunk's pooled width is the embedding
    ("test_vit", "avg", "", 160, 32),  # the trunk's own classifier as the projection
    ("test_vit", "map", "none", 160, 64),  # timm's attention-pool head (SigLIP's "map"), no projection
])
def test_outputs_equal_open_clip_timm_towers(name, pool, proj, size, embed):
    oc, ours = _pair(name, pool, proj, size, embed)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        theirs, mine = oc.encode_image(x), ours.encode_image(x)
    assert mine.shape == theirs.shape
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


def test_projection_bias_and_state_dict_keys_are_open_clips():
    oc, ours = _pair("test_convnext", "", "linear", 64, timm_proj_bias=True)
    keys = {k for k in oc.state_dict() if k.startswith("visual.")}
    assert keys == {f"visual.{k}" for k in ours.visual.state_dict()}
    assert "visual.head.proj.bias" in keys


def test_config_validates_and_round_trips_with_its_kind():
    with pytest.raises(ValueError, match="pool must be one of"):
        TimmTowerConfig("test_convnext", 32, pool="mean")
    with pytest.raises(ValueError, match="proj must be one of"):
        TimmTowerConfig("test_convnext", 32, proj="conv")
    with pytest.raises(ValueError, match="need embed_dim > 0"):
        TimmTowerConfig("test_convnext", 0, proj="linear")
    with pytest.raises(ValueError, match="has no option"):
        TimmTowerConfig("test_convnext", 32).replace(rope=True)
    assert TimmTowerConfig("test_convnext", 32).replace(num_classes=8, drop_rate=0.1).embed_dim == 8
    cfg = CLIPConfig(embed_dim=32, vision=TimmTowerConfig("test_convnext", 32, img_size=64),
                     text=TextConfig(width=32, heads=2, layers=1, embed_dim=32))
    d = cfg.to_dict()
    assert d["vision"]["kind"] == "timm" and d["text"]["kind"] == "clip_text"
    assert CLIPConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="not a timm model"):
        TimmTower(TimmTowerConfig("no_such_net_xyz", 32))


def test_resolution_comes_from_the_config():
    vit = TimmTower(TimmTowerConfig("test_vit", 32, img_size=64, pool="token"))
    assert vit.trunk.patch_embed.grid_size == (4, 4)  # 64 px / patch 16 (timm's default would be 160 px)
    assert vit(torch.randn(1, 3, 64, 64)).shape == (1, 32)
    cnn = TimmTower(TimmTowerConfig("test_convnext", 32, img_size=96, pool="avg"))  # any size for a CNN
    assert cnn(torch.randn(1, 3, 96, 96)).shape == (1, 32)


def test_layer_ids_follow_timms_group_matcher_and_lock_the_tower():
    model = CLIP(CLIPConfig(embed_dim=32, vision=TimmTowerConfig("test_convnext", 32, img_size=64, pool=""),
                            text=TextConfig(width=32, heads=2, layers=1, embed_dim=32)))
    v = model.visual
    ids = {n: v.layer_id(n) for n, _ in v.named_parameters()}
    assert ids["trunk.stem.0.weight"] == 0
    assert ids["head.proj.weight"] == v.num_layers - 1
    stage_ids = [ids[n] for n in ids if n.startswith("trunk.stages.")]
    assert min(stage_ids) >= 1 and max(stage_ids) < v.num_layers - 1 and len(set(stage_ids)) > 3
    model.lock_image_tower(unlocked_groups=1)  # only the head stays trainable
    trainable = {n for n, p in v.named_parameters() if p.requires_grad}
    assert trainable == {"head.proj.weight"}
    assert all(p.requires_grad for p in model.text.parameters())


def test_layer_decay_groups_from_the_towers_hooks():
    from openeva.train.optim import param_groups
    from openeva.train.task import ParamGroupSpec

    v = TimmTower(TimmTowerConfig("test_vit", 32, img_size=64, pool="token"))
    groups = param_groups(v, [ParamGroupSpec(module=v, prefix="visual", layer_decay=0.5)], 1.0, 0.05)
    scales = {g["lr_scale"] for g in groups}
    assert max(scales) == 1.0 and min(scales) == pytest.approx(0.5 ** (v.num_layers - 1))
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]}
    assert {"visual.trunk.pos_embed", "visual.trunk.cls_token"} <= no_decay  # timm's no_weight_decay()
    assert v.no_weight_decay() >= {"trunk.pos_embed", "trunk.cls_token"}


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    v = TimmTower(TimmTowerConfig("test_vit", 16, img_size=32, pool="avg"))
    x = torch.randn(2, 3, 32, 32)
    v(x).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in v.named_parameters()}
    v.zero_grad()
    v.set_grad_checkpointing(True)
    assert v.trunk.grad_checkpointing
    v(x).square().sum().backward()
    for n, p in v.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-6)


def test_intermediates_and_dense_features():
    torch.manual_seed(0)
    v = TimmTower(TimmTowerConfig("test_convnext", 16, img_size=64, pool="")).eval()
    maps = v.forward_intermediates(torch.randn(2, 3, 64, 64), indices=2)
    assert [m.shape[-1] for m in maps] == [4, 2] and maps[-1].shape[:2] == (2, v.trunk.num_features)
    assert v.has_dense and v.patch_size == 32
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        assert v.forward_dense(x).shape == (2, 16, 4, 3)
        one_cell = torch.randn(2, 3, 32, 32)  # a 1x1 feature map: the dense path is the pooled path
        torch.testing.assert_close(v.forward_dense(one_cell)[..., 0, 0], v(one_cell), rtol=1e-5, atol=1e-6)
    token = TimmTower(TimmTowerConfig("test_vit", 16, img_size=32, pool="token"))
    assert not token.has_dense
    with pytest.raises(ValueError, match="average-pooled"):
        token.forward_dense(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no token mask"):
        v.forward_intermediates(torch.randn(1, 3, 64, 64), mask=torch.zeros(1, 4, dtype=torch.bool))


def test_open_vocabulary_segmentation_runs_on_a_convnext_clip():
    import numpy as np
    from PIL import Image

    from openeva.dense.segmenter import OpenVocabSegmenter
    from openeva.factory import create_model, get_tokenizer

    torch.manual_seed(0)
    model = create_model("convnext-test")
    seg = OpenVocabSegmenter(model, get_tokenizer("convnext-test"), templates=["a {c}."])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 130, 3), dtype=np.uint8))
    result = seg.segment(image, ["sky", "road"])
    assert result.labels.shape == (70, 130) and set(np.unique(result.labels)) <= {1, 2}
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        dense = model.visual.forward_dense(x)
    from openeva.dense.segment import dense_embeddings

    torch.testing.assert_close(dense_embeddings(model, x), torch.nn.functional.normalize(dense, dim=1))
