"""Contract tests of the EVA ViT, parametrized over the tiny registered models (their vision towers for CLIP).

Forward shapes, gradients, gradient checkpointing, save/load round trip, resolution change, meta device,
patch dropout (RoPE rows follow the kept patches), the mask token, intermediate maps and the trainer hooks.
"""

from __future__ import annotations

import copy

import pytest
import torch

import openeva
from openeva.layers import resample_pos_embed
from openeva.models import CLIP, EVAViT, ViTConfig

MODELS = ["eva02_test_patch8_32", "eva02_test_packed_patch8_32", "EVA02-test", "EVA02-E-test"]
BACKBONES = ["eva02_test_patch8_32", "eva02_test_packed_patch8_32"]


def _build(name: str, randomize, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return randomize(openeva.create_model(name, **kwargs), seed)


def _tower(model) -> EVAViT:
    return model.visual if isinstance(model, CLIP) else model


def _images(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes(name, randomize):
    vit = _tower(_build(name, randomize)).eval()
    x = _images(2, 3, 32, 32)
    tokens = vit.forward_features(x)
    assert tokens.shape == (2, 1 + 16, 64)
    assert vit.forward_head(tokens, pre_logits=True).shape == (2, 64)
    out_dim = vit.num_classes or vit.embed_dim
    assert vit(x).shape == (2, out_dim)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        vit(_images(1, 3, 30, 32))


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_trainable_parameter(name, randomize):
    vit = _tower(_build(name, randomize)).train()
    vit(_images(2, 3, 32, 32)).square().mean().backward()
    for n, p in vit.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", MODELS)
def test_gradient_checkpointing_gives_the_same_outputs_and_grads(name, randomize, monkeypatch):
    plain = _tower(_build(name, randomize)).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    import openeva.models.vit as vit_module

    calls = []
    real = vit_module.checkpoint
    monkeypatch.setattr(vit_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = _images(2, 3, 32, 32)
    out_plain, out_ckpt = plain(x), ckpt(x)
    assert len(calls) == plain.cfg.depth  # every block went through torch.utils.checkpoint
    torch.testing.assert_close(out_ckpt, out_plain)
    out_plain.square().mean().backward()
    out_ckpt.square().mean().backward()
    grads = dict(ckpt.named_parameters())
    for n, p in plain.named_parameters():
        torch.testing.assert_close(grads[n].grad, p.grad, msg=n)
    with torch.no_grad():  # no graph, nothing to recompute: checkpointing is skipped
        ckpt(x)
    assert len(calls) == plain.cfg.depth


@pytest.mark.parametrize("name", MODELS)
def test_save_and_create_from_directory_round_trip(name, randomize, tmp_path):
    model = _build(name, randomize).eval()
    out = openeva.save_model(model, tmp_path / "ckpt")
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    loaded = openeva.create_model(str(out)).eval()
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    sd = loaded.state_dict()
    assert sd.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k
    x = _images(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(_tower(loaded)(x), _tower(model)(x))


def test_round_trip_keeps_changed_resolution_and_head(randomize, tmp_path):
    model = _build("eva02_test_patch8_32", randomize, img_size=(40, 48), num_classes=5).eval()
    openeva.save_model(model, tmp_path / "ckpt")
    loaded = openeva.create_model(f"local-dir:{tmp_path / 'ckpt'}").eval()
    assert loaded.cfg.img_size == (40, 48) and loaded.num_classes == 5
    x = _images(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_resolution_change_and_resampled_checkpoint(name, randomize, tmp_path):
    model = _build(name, randomize).eval()
    openeva.save_model(model, tmp_path / "ckpt")
    big = openeva.create_model(str(tmp_path / "ckpt"), img_size=(40, 48)).eval()
    vit, big_vit = _tower(model), _tower(big)
    assert big_vit.cfg.img_size == (40, 48) and big_vit.cfg.grid_size == (5, 6)
    expected = resample_pos_embed(vit.pos_embed.detach(), (5, 6), (4, 4))
    torch.testing.assert_close(big_vit.pos_embed.detach(), expected)
    x = _images(2, 3, 40, 48)
    with torch.no_grad():
        out = big_vit(x)
        assert big_vit.forward_features(x).shape == (2, 1 + 30, 64)
        # the 32px model fed 40x48 images resamples its table on the fly: the same network
        torch.testing.assert_close(vit(x), out)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_builds_and_runs_on_the_meta_device(name):
    with torch.device("meta"):
        model = openeva.create_model(name, device="meta")
        vit = _tower(model)
        assert all(p.is_meta for p in model.parameters())
        out = vit.forward_features(torch.empty(2, 3, 32, 32))
    assert out.is_meta and out.shape == (2, 17, 64)


def test_bf16_weights_and_autocast_stay_close_to_fp32(randomize, relative_difference):
    vit = _build("eva02_test_patch8_32", randomize).eval()
    x = _images(2, 3, 32, 32)
    with torch.no_grad():
        ref = vit(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = vit(x)
        half = copy.deepcopy(vit).to(torch.bfloat16)(x.bfloat16())
    assert half.dtype == torch.bfloat16
    assert relative_difference(auto.float(), ref) < 3e-2
    assert relative_difference(half.float(), ref) < 3e-2


# ------------------------------------------------------------------------------------------- patch dropout
def _fixed_keep(monkeypatch, keep: torch.Tensor) -> None:
    import openeva.models.vit as vit_module

    monkeypatch.setattr(vit_module, "patch_keep_indices", lambda batch, n, rate, device: keep[:batch].to(device))


@pytest.mark.parametrize("name", MODELS)
def test_patch_dropout_moves_rope_rows_with_the_kept_patches(name, randomize, monkeypatch):
    """Keeping every patch in a shuffled order must shuffle the output tokens and change nothing else; keeping a
    subset in two orders must agree up to that order. Both fail if RoPE rows did not follow their patches."""
    plain = _tower(_build(name, randomize)).eval()
    drop = _tower(_build(name, randomize, force_patch_dropout=0.5)).train()
    x = _images(2, 3, 32, 32)
    g = torch.Generator().manual_seed(5)
    perm = torch.stack([torch.randperm(16, generator=g) for _ in range(2)])  # (B, N), unsorted
    _fixed_keep(monkeypatch, perm)
    with torch.no_grad():
        full = plain.forward_features(x)  # (B, 1 + N, D)
        shuffled = drop.forward_features(x)
    expected = torch.cat([full[:, :1], full[:, 1:].gather(1, perm.unsqueeze(-1).expand(-1, -1, 64))], dim=1)
    torch.testing.assert_close(shuffled, expected)

    subset = perm[:, :6].sort(dim=-1).values  # (B, 6)
    order = torch.stack([torch.randperm(6, generator=g) for _ in range(2)])
    _fixed_keep(monkeypatch, subset)
    with torch.no_grad():
        a = drop.forward_features(x)  # (B, 1 + 6, D)
    _fixed_keep(monkeypatch, subset.gather(1, order))
    with torch.no_grad():
        b = drop.forward_features(x)
    assert a.shape == (2, 7, 64)
    torch.testing.assert_close(b[:, 1:], a[:, 1:].gather(1, order.unsqueeze(-1).expand(-1, -1, 64)))
    torch.testing.assert_close(b[:, 0], a[:, 0])


@pytest.mark.parametrize("name", MODELS)
def test_patch_dropout_shapes_seeding_and_eval(name, randomize):
    vit = _tower(_build(name, randomize, force_patch_dropout=0.5)).train()
    x = _images(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(7)
        a = vit.forward_features(x)
        torch.manual_seed(7)
        b = vit.forward_features(x)
        torch.manual_seed(8)
        c = vit.forward_features(x)
        maps = vit.forward_intermediates(x, indices=1)  # maps always see every patch
        vit.eval()
        full = vit.forward_features(x)
    assert a.shape == (2, 1 + 8, 64)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert full.shape == (2, 17, 64)
    assert maps[0].shape == (2, 64, 4, 4)
    assert vit.training is False  # forward_intermediates restored the mode it found (train), then eval() ran


# --------------------------------------------------------------------------------------------- mask token
@pytest.mark.parametrize("name", BACKBONES)
def test_mask_token_replaces_only_masked_patches(name, randomize):
    vit = _build(name, randomize, mask_token=True).eval()
    x = _images(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [0, 5, 6, 15]] = True
    # pixels of patch 5 (row 1, col 1) changed; patch 1 (row 0, col 1) changed
    x_masked_change, x_visible_change = x.clone(), x.clone()
    x_masked_change[:, :, 8:16, 8:16] += 1.0
    x_visible_change[:, :, 0:8, 8:16] += 1.0
    with torch.no_grad():
        plain = vit.forward_features(x)
        none_masked = vit.forward_features(x, mask=torch.zeros_like(mask))
        masked = vit.forward_features(x, mask=mask)
        masked_after_masked_change = vit.forward_features(x_masked_change, mask=mask)
        masked_after_visible_change = vit.forward_features(x_visible_change, mask=mask)
    torch.testing.assert_close(none_masked, plain)
    assert not torch.allclose(masked, plain)
    torch.testing.assert_close(masked_after_masked_change, masked)
    assert not torch.allclose(masked_after_visible_change, masked)
    assert "mask_token" not in vit.no_weight_decay()  # EVA-02 MIM decays the mask token ({pos_embed, cls_token})


def test_mask_errors():
    vit = openeva.create_model("eva02_test_patch8_32")
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="no mask token"):
        vit(x, mask=torch.zeros(1, 16, dtype=torch.bool))
    with_token = openeva.create_model("eva02_test_patch8_32", mask_token=True)
    with pytest.raises(ValueError, match="mask shape"):
        with_token(x, mask=torch.zeros(1, 15, dtype=torch.bool))


# ------------------------------------------------------------------------------------- intermediate maps
@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates(name, randomize):
    vit = _tower(_build(name, randomize)).eval()
    x = _images(2, 3, 32, 32)
    with torch.no_grad():
        last_two = vit.forward_intermediates(x, indices=2)
        picked = vit.forward_intermediates(x, indices=[0, -1])
        tokens = vit.forward_features(x)
        normed = vit.forward_intermediates(x, indices=1, norm=True)[0]
    assert [m.shape for m in last_two] == [(2, 64, 4, 4)] * 2
    torch.testing.assert_close(picked[0], last_two[0])
    torch.testing.assert_close(picked[1], last_two[1])
    patches = tokens[:, 1:].transpose(1, 2).reshape(2, 64, 4, 4)  # (B, D, H, W), row-major grid
    # token-pooling towers end with ``norm`` (in forward_features); mean-pooling backbones with ``fc_norm``
    # after pooling, so their raw last map is forward_features' and norm=True applies fc_norm per token
    if vit.cfg.global_pool == "token":
        torch.testing.assert_close(normed, patches)
    else:
        torch.testing.assert_close(last_two[1], patches)
        expected = vit.fc_norm(tokens[:, 1:]).transpose(1, 2).reshape(2, 64, 4, 4)
        torch.testing.assert_close(normed, expected)
    for bad in ([2], [-3], 0):
        with pytest.raises(ValueError, match="out of range"):
            vit.forward_intermediates(x, indices=bad)


def test_forward_intermediates_on_a_non_square_grid(randomize):
    vit = _build("eva02_test_patch8_32", randomize, img_size=(40, 48)).eval()
    with torch.no_grad():
        maps = vit.forward_intermediates(_images(1, 3, 40, 48), indices=[1])
        tokens = vit.forward_features(_images(1, 3, 40, 48))
    assert maps[0].shape == (1, 64, 5, 6)
    torch.testing.assert_close(maps[0][0, :, 1, 2], tokens[0, 1 + 1 * 6 + 2])  # row 1, col 2


# ----------------------------------------------------------------------------------------- trainer hooks
@pytest.mark.parametrize("name", MODELS)
def test_no_weight_decay_names_real_parameters(name):
    vit = _tower(openeva.create_model(name))
    names = {n for n, _ in vit.named_parameters()}
    assert vit.no_weight_decay() == {"cls_token", "pos_embed"}
    assert vit.no_weight_decay() <= names


@pytest.mark.parametrize("name", MODELS)
def test_layer_ids(name):
    vit = _tower(openeva.create_model(name))
    depth = vit.cfg.depth
    assert vit.num_layers == depth + 2
    ids = {n: vit.layer_id(n) for n, _ in vit.named_parameters()}
    assert set(ids.values()) == set(range(depth + 2))
    for n, i in ids.items():
        if n.startswith(("patch_embed.", "cls_token", "pos_embed")):
            assert i == 0, n
        elif n.startswith("blocks."):
            assert i == int(n.split(".")[1]) + 1, n
        else:  # final norms and head
            assert i == depth + 1, n
    order = [ids[n] for n, _ in vit.named_parameters()]
    assert order == sorted(order)  # registration order is input-to-output


def test_reset_classifier(randomize):
    vit = _build("eva02_test_patch8_32", randomize).eval()
    x = _images(1, 3, 32, 32)
    vit.reset_classifier(7)
    assert vit(x).shape == (1, 7) and vit.cfg.num_classes == 7
    vit.reset_classifier(0)
    assert vit(x).shape == (1, 64) and vit.cfg.num_classes == 0


def test_patch_embed_gradient_scale(randomize):
    """EVA-02 MIM scales the patch-embedding gradient (0.1); 0 detaches it; the forward is unchanged."""
    x = _images(2, 3, 32, 32)
    grads, outs = {}, {}
    for scale in (1.0, 0.1, 0.0):
        vit = _build("eva02_test_patch8_32", randomize, patch_embed_grad_scale=scale).train()
        out = vit(x)
        out.square().mean().backward()
        grads[scale], outs[scale] = vit.patch_embed.proj.weight.grad, out.detach()
    torch.testing.assert_close(outs[0.1], outs[1.0])
    torch.testing.assert_close(grads[0.1], 0.1 * grads[1.0])
    assert grads[0.0] is None


def test_drop_path_is_random_in_training_only(randomize):
    vit = _build("eva02_test_patch8_32", randomize, drop_path_rate=0.5)
    x = _images(8, 3, 32, 32)
    with torch.no_grad():
        vit.train()
        torch.manual_seed(0)
        a = vit(x)
        b = vit(x)
        vit.eval()
        c, d = vit(x), vit(x)
    assert not torch.equal(a, b)
    assert torch.equal(c, d)
    assert [blk.drop_path1.p for blk in vit.blocks] == [0.0, 0.5]  # linear decay rule over depth


@pytest.mark.parametrize("changes,match", [
    (dict(mlp="relu"), "mlp must be"),
    (dict(img_size=(30, 32)), "not divisible by patch_size"),
    (dict(embed_dim=60, num_heads=2), "RoPE needs a head dim divisible by 4"),
    (dict(embed_dim=64, num_heads=3), "not divisible by num_heads"),
    (dict(global_pool="max"), "global_pool"),
    (dict(patch_drop_rate=1.0), "patch_drop_rate"),
    (dict(mlp="gelu", mlp_norm=True), "only defined for the SwiGLU"),
    (dict(depth=0), "depth must be positive"),
])
def test_config_validation(changes, match):
    base = dict(embed_dim=64, depth=2, num_heads=2, mlp_hidden=128, patch_size=8, img_size=32)
    with pytest.raises(ValueError, match=match):
        ViTConfig(**{**base, **changes})


def test_config_round_trips_through_a_dict():
    cfg = openeva.get_model_spec("EVA02-test").config.vision
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
