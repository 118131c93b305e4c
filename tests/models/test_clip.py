"""Contract tests of the two-tower EVA-CLIP model and its text tower, over the tiny CLIP test models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import openeva
from openeva.models import CLIP, CLIPConfig, TextConfig

MODELS = ["EVA02-test", "EVA02-E-test"]


def _build(name: str, randomize, seed: int = 0, **kwargs) -> CLIP:
    torch.manual_seed(seed)
    return randomize(openeva.create_model(name, **kwargs), seed)


def _images(n=4, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _text(n=4, length=77, seed=2):
    """Token rows shaped like the tokenizer's: SOT, words, EOT (the highest id), zero padding."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(n, length, dtype=torch.long)
    for i in range(n):
        k = 3 + i
        rows[i, 0] = 49406
        rows[i, 1:k] = torch.randint(1, 49000, (k - 1,), generator=g)
        rows[i, k] = 49407
    return rows


def _contrastive_loss(model, images, text):
    img, txt, scale = model(images, text)
    logits = scale * img @ txt.T  # (B, B)
    labels = torch.arange(len(images))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@pytest.mark.parametrize("name", MODELS)
def test_encoders_and_forward(name, randomize):
    model = _build(name, randomize).eval()
    images, text = _images(), _text()
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(text)
        img_n, txt_n, scale = model(images, text)
    assert img.shape == txt.shape == (4, model.embed_dim)
    torch.testing.assert_close(img_n, F.normalize(img, dim=-1))
    torch.testing.assert_close(txt_n, F.normalize(txt, dim=-1))
    torch.testing.assert_close(model.encode_image(images, normalize=True).norm(dim=-1), torch.ones(4))
    assert scale.item() == pytest.approx(math.exp(2.0))  # randomize() sets logit_scale to 2
    fresh = openeva.create_model(name)
    assert fresh.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert fresh.context_length == 77


@pytest.mark.parametrize("name", MODELS)
def test_contrastive_backward_reaches_every_parameter(name, randomize):
    model = _build(name, randomize).train()
    _contrastive_loss(model, _images(), _text()).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        if n != "text.token_embedding.weight":  # only the rows of tokens in the batch get gradient
            assert p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", MODELS)
def test_gradient_checkpointing_on_both_towers(name, randomize):
    plain = _build(name, randomize).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    assert ckpt.visual.grad_checkpointing and ckpt.text.grad_checkpointing
    images, text = _images(), _text()
    loss_plain, loss_ckpt = _contrastive_loss(plain, images, text), _contrastive_loss(ckpt, images, text)
    torch.testing.assert_close(loss_ckpt, loss_plain)
    loss_plain.backward()
    loss_ckpt.backward()
    grads = dict(ckpt.named_parameters())
    for n, p in plain.named_parameters():
        torch.testing.assert_close(grads[n].grad, p.grad, msg=n)


def test_text_tower_pools_at_end_of_text_and_is_causal(randomize):
    model = _build("EVA02-test", randomize).eval()
    text = _text()
    changed_after, changed_before = text.clone(), text.clone()
    changed_after[0, 10] = 123  # after row 0's EOT (position 3): invisible under the causal mask
    changed_before[0, 1] = 123
    with torch.no_grad():
        ref = model.encode_text(text)
        after, before = model.encode_text(changed_after), model.encode_text(changed_before)
        short = model.encode_text(text[:, :20])  # shorter context: the same tokens give the same features
    torch.testing.assert_close(after, ref)
    assert not torch.allclose(before[0], ref[0])
    torch.testing.assert_close(before[1:], ref[1:])
    torch.testing.assert_close(short, ref)


def test_text_input_errors():
    model = openeva.create_model("EVA02-test")
    with pytest.raises(ValueError, match="token ids"):
        model.encode_text(torch.zeros(2, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model.encode_text(torch.zeros(77, dtype=torch.long))


@pytest.mark.parametrize("unlocked", [0, 1, 2])
def test_lock_image_tower_freezes_all_but_the_last_groups(unlocked):
    model = openeva.create_model("EVA02-test")
    model.lock_image_tower(unlocked_groups=unlocked)
    vis = model.visual
    trainable = {n for n, p in vis.named_parameters() if p.requires_grad}
    if unlocked == 0:
        assert trainable == set()
    else:
        last = vis.num_layers - 1  # head and final norm
        expected = {n for n, _ in vis.named_parameters() if vis.layer_id(n) > last - unlocked}
        assert trainable == expected
        assert {"head.weight", "norm.weight"} <= trainable
        assert any(n.startswith(f"blocks.{vis.cfg.depth - 1}.") for n in trainable) == (unlocked == 2)
        assert not any(n.startswith(("patch_embed", "blocks.0.")) for n in trainable)
    assert all(p.requires_grad for p in model.text.parameters())
    assert model.logit_scale.requires_grad


def test_lock_text_tower():
    model = openeva.create_model("EVA02-test")
    model.lock_text_tower(unlocked_layers=1)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert trainable == {"ln_final.weight", "ln_final.bias", "text_projection"}
    assert all(p.requires_grad for p in model.visual.parameters())


def test_no_weight_decay_and_layer_ids_of_the_text_tower():
    model = openeva.create_model("EVA02-test")
    names = {n for n, _ in model.named_parameters()}
    nwd = model.no_weight_decay()
    assert nwd <= names
    # EVA-CLIP's lists: the token embedding is decayed (EVA-CLIP's text no_weight_decay() is {positional_embedding})
    assert {"logit_scale", "visual.cls_token", "visual.pos_embed", "text.positional_embedding"} == nwd
    text = model.text
    ids = {n: text.layer_id(n) for n, _ in text.named_parameters()}
    assert set(ids.values()) == set(range(text.num_layers))
    assert ids["token_embedding.weight"] == 0 and ids["transformer.resblocks.1.mlp.c_fc.weight"] == 2
    assert ids["text_projection"] == text.num_layers - 1


def test_create_model_options_for_clip_models():
    bf16 = openeva.create_model("EVA02-test", precision="bf16")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    dropped = openeva.create_model("EVA02-test", force_patch_dropout=0.5)
    assert dropped.visual.cfg.patch_drop_rate == 0.5
    with pytest.raises(ValueError, match="num_classes applies to backbones"):
        openeva.create_model("EVA02-test", num_classes=10)
    with pytest.raises(ValueError, match="precision"):
        openeva.create_model("EVA02-test", precision="fp8")


def test_model_and_transforms_follow_the_image_size():
    model, train, val = openeva.create_model_and_transforms("EVA02-test", force_image_size=(40, 48))
    from PIL import Image

    out = val(Image.new("RGB", (100, 60)))
    assert out.shape == (3, 40, 48)
    assert train(Image.new("RGB", (100, 60))).shape == (3, 40, 48)
    assert openeva.get_tokenizer("EVA02-test")(["a cat"]).shape == (1, 77)


def test_clip_config_validation_and_dict_round_trip():
    cfg = openeva.get_model_spec("EVA02-test").config
    assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="vision head dim"):
        CLIPConfig(embed_dim=16, vision=cfg.vision, text=cfg.text.replace(embed_dim=16))
    with pytest.raises(ValueError, match="text projection dim"):
        CLIPConfig(embed_dim=32, vision=cfg.vision, text=cfg.text.replace(embed_dim=16))
    with pytest.raises(ValueError, match="not divisible"):
        TextConfig(width=64, heads=3, layers=2, embed_dim=32)
