"""Parameter groups (per-tower lr, layer decay, no-decay set), optimizers and lr schedules."""

import math

import pytest
import torch

from openeva.factory import create_model
from openeva.train.clip_task import CLIPTask
from openeva.train.optim import create_optimizer, param_groups
from openeva.train.schedule import LRSchedule, lr_factor
from openeva.train.task import ParamGroupSpec


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_model("EVA02-test")


def _by_name(groups):
    return {n: g for g in groups for n in g["param_names"]}


def test_clip_groups_follow_the_eva_clip_recipe(clip):
    task = CLIPTask(clip, visual_lr=2e-4, text_lr=2e-5, visual_layer_decay=0.75, text_layer_decay=0.5,
                    text_weight_decay=0.1)
    groups = param_groups(task, task.param_group_specs(), base_lr=5e-4, weight_decay=0.05)
    g = _by_name(groups)
    assert set(g) == {f"model.{n}" for n, _ in clip.named_parameters()}  # every parameter exactly once
    assert sum(len(x["param_names"]) for x in groups) == len(list(clip.parameters()))
    V, T = clip.visual.num_layers, clip.text.num_layers  # depth + 2
    lr = lambda n: g[n]["base_lr"] * g[n]["lr_scale"]  # noqa: E731
    # vision tower: lr 2e-4 scaled by 0.75 ** (L - 1 - layer)
    assert lr("model.visual.blocks.0.attn.qkv.weight") == pytest.approx(2e-4 * 0.75 ** (V - 2))
    assert lr("model.visual.patch_embed.proj.weight") == pytest.approx(2e-4 * 0.75 ** (V - 1))
    assert lr("model.visual.head.weight") == pytest.approx(2e-4)
    assert lr("model.text.transformer.resblocks.1.mlp.c_fc.weight") == pytest.approx(2e-5 * 0.5 ** (T - 3))
    assert lr("model.text.text_projection") == pytest.approx(2e-5)
    assert lr("model.logit_scale") == pytest.approx(5e-4)  # the rest: base lr, no layer decay
    # no weight decay on biases, norms, position embeddings, class token, logit scale; EVA-CLIP decays the token
    # embedding (its text tower's no_weight_decay() is {positional_embedding})
    for name in ("model.visual.blocks.0.attn.q_bias", "model.visual.blocks.0.norm1.weight",
                 "model.visual.blocks.1.mlp.fc2.bias", "model.visual.pos_embed", "model.visual.cls_token",
                 "model.text.positional_embedding", "model.text.ln_final.weight", "model.logit_scale"):
        assert g[name]["weight_decay"] == 0.0, name
    assert g["model.text.token_embedding.weight"]["weight_decay"] == 0.1
    assert g["model.visual.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert g["model.text.transformer.resblocks.0.attn.in_proj_weight"]["weight_decay"] == 0.1


def test_frozen_towers_and_uncovered_parameters(clip):
    model = create_model("EVA02-test")
    model.lock_image_tower()
    task = CLIPTask(model, loss="siglip")  # siglip adds a Task-level logit_bias outside the specs
    g = _by_name(param_groups(task, task.param_group_specs(), 1e-3, 0.05))
    assert not any(n.startswith("model.visual.") for n in g)
    assert g["logit_bias"]["base_lr"] == 1e-3 and g["logit_bias"]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="layer decay"):
        param_groups(task, [ParamGroupSpec(torch.nn.Linear(2, 2), "lin", layer_decay=0.5)], 1e-3, 0.0)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_optimizers_step_with_group_hyperparameters(clip, name):
    task = CLIPTask(create_model("EVA02-test"), visual_lr=1e-3, visual_layer_decay=0.5)
    groups = param_groups(task, task.param_group_specs(), 1e-3, 0.05)
    opt = create_optimizer(groups, name, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    assert type(opt).__name__ == {"adamw": "AdamW", "lamb": "Lamb"}[name]
    assert [pg["lr_scale"] for pg in opt.param_groups] == [g["lr_scale"] for g in groups]
    before = task.model.visual.head.weight.detach().clone()
    images, tokens = torch.randn(4, 3, 32, 32), torch.randint(1, 100, (4, 77))
    loss, _ = task((images, tokens))
    loss.backward()
    opt.step()
    assert not torch.equal(before, task.model.visual.head.weight)
    with pytest.raises(ValueError, match="adamw or lamb"):
        create_optimizer(groups, "sgd", lr=1e-3)


def test_warmup_then_cosine():
    f = lambda s: lr_factor(s, total_steps=110, warmup_steps=10)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))
    assert lr_factor(110, 110, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_const_and_cooldown():
    assert lr_factor(50, 100, 10, "const") == 1.0
    assert lr_factor(79, 100, 10, "const-cooldown", cooldown_steps=20) == 1.0
    assert lr_factor(90, 100, 10, "const-cooldown", cooldown_steps=20) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="scheduler"):
        lr_factor(0, 10, 0, "linear")


def test_schedule_sets_each_group_from_its_own_lr():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p1], "base_lr": 1e-3, "lr_scale": 0.5, "lr": 0},
                             {"params": [p2], "base_lr": 1e-4, "lr_scale": 1.0, "lr": 0}])
    sched = LRSchedule(opt, total_steps=20, warmup_steps=4)
    sched.set_step(1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * 0.5 * 0.5, 1e-4 * 0.5])
    sched.set_step(12)
    assert opt.param_groups[0]["lr"] / opt.param_groups[1]["lr"] == pytest.approx(5.0)
    assert math.isclose(opt.param_groups[1]["lr"], 1e-4 * lr_factor(12, 20, 4))
    with pytest.raises(ValueError, match="warmup"):
        LRSchedule(opt, total_steps=3, warmup_steps=4)


def test_adamw_uses_the_fused_kernel_and_matches_the_reference_update():
    """create_optimizer picks torch's fused AdamW for plain CPU parameters; its update is AdamW's."""
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    groups = [{"name": "all", "params": list(a.parameters()), "param_names": ["weight", "bias"], "lr_scale": 1.0,
               "base_lr": 1e-2, "weight_decay": 0.05}]
    ours = create_optimizer(groups, "adamw", lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    assert ours.defaults["fused"] is True
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05,
                            foreach=False)
    for step in range(5):
        x = torch.randn(16, 8)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_adamw_keeps_the_default_kernel_for_parameters_fused_does_not_take():
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    groups = [{"name": "all", "params": [meta], "param_names": ["w"], "lr_scale": 1.0, "base_lr": 1e-3,
               "weight_decay": 0.0}]
    assert not create_optimizer(groups, "adamw", lr=1e-3).defaults["fused"]


def test_betas_preset_names_eva_clip_paper_and_release_values():
    """The paper's (0.9, 0.98) / 1e-6 is the default; the released EVA-CLIP command's (0.9, 0.999) / 1e-8 is a
    named preset that sets both, survives a config round trip, and refuses a contradicting explicit value."""
    from openeva.configs import load_config
    from openeva.train.config import BETAS_PRESETS, OptimConfig, TrainConfig, apply_overrides

    assert (OptimConfig().betas, OptimConfig().eps) == BETAS_PRESETS["eva_clip_paper"] == ((0.9, 0.98), 1e-6)
    release = OptimConfig(optimizer="lamb", betas_preset="eva_clip_release")
    assert (release.betas, release.eps) == ((0.9, 0.999), 1e-8)
    recipe = load_config("clip_eva02_b16")
    assert (recipe.optim.betas, recipe.optim.eps) == ((0.9, 0.98), 1e-6)
    cfg = apply_overrides(recipe, ["optim.betas_preset=eva_clip_release"])
    assert (cfg.optim.betas, cfg.optim.eps) == ((0.9, 0.999), 1e-8)
    assert TrainConfig.from_dict(cfg.to_dict()).optim == cfg.optim
    with pytest.raises(ValueError, match="drop one"):
        OptimConfig(betas=(0.9, 0.95), betas_preset="eva_clip_release")
    with pytest.raises(ValueError, match="drop one"):
        apply_overrides(cfg, ["optim.eps=1e-7"])
    with pytest.raises(ValueError, match="betas_preset"):
        recipe.replace(optim=OptimConfig(betas_preset="timm"))
