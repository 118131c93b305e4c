"""FinetuneTask pieces that need no training engine: loss, mixup, EMA, head / patch-embedding handling,
classifier building from names and checkpoints, transforms, evaluation and input checks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openeva.train.finetune_task import (
    FinetuneTask,
    ModelEMA,
    build_classifier,
    evaluate_classifier,
    finetune_transforms,
    layer_lr_scales,
)

MODEL = "eva02_test_patch8_32"


def _batch(n=6, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, k, (n,), generator=g)


def test_cross_entropy_with_label_smoothing_and_train_accuracy():
    model = build_classifier(MODEL, 4, drop_path_rate=0.0)
    task = FinetuneTask(model, 4, label_smoothing=0.2)
    images, labels = _batch()
    loss, metrics = task((images, labels))
    logits = model(images)
    assert torch.allclose(loss, F.cross_entropy(logits, labels, label_smoothing=0.2), atol=1e-5)
    assert metrics["acc1"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def test_mixup_uses_soft_targets_and_drops_an_odd_sample():
    model = build_classifier(MODEL, 4, drop_path_rate=0.0)
    task = FinetuneTask(model, 4, label_smoothing=0.1, mixup=0.8, cutmix=1.0)
    images, labels = _batch(n=5)
    np.random.seed(0)
    loss, metrics = task((images, labels))
    assert torch.isfinite(loss) and "acc1" not in metrics
    loss.backward()
    assert model.head.weight.grad is not None
    # eval mode never mixes: plain smoothed cross-entropy on every sample
    task.eval()
    loss_eval, metrics_eval = task((images, labels))
    assert loss_eval.item() == pytest.approx(F.cross_entropy(model(images), labels, label_smoothing=0.1).item(),
                                             abs=1e-5)
    assert "acc1" in metrics_eval


def test_patch_embedding_detached_by_default_and_trainable_on_request():
    images, labels = _batch()
    detached = build_classifier(MODEL, 4)
    task = FinetuneTask(detached, 4)
    task((images, labels))[0].backward()
    assert detached.cfg.patch_embed_grad_scale == 0.0
    assert all(not p.requires_grad and p.grad is None for p in detached.patch_embed.parameters())
    assert detached.blocks[0].attn.qkv.weight.grad is not None

    trained = build_classifier(MODEL, 4, patch_embed_grad_scale=1.0)
    FinetuneTask(trained, 4)((images, labels))[0].backward()
    assert trained.patch_embed.proj.weight.grad is not None


def test_layer_decay_spec_and_scales():
    model = build_classifier(MODEL, 4)
    task = FinetuneTask(model, 4, layer_decay=0.8)
    (spec,) = task.param_group_specs()
    assert spec.module is model and spec.layer_decay == 0.8
    scales = layer_lr_scales(model, 0.8)  # depth 2 -> ids 0 (embed) .. 3 (head)
    assert scales["head.weight"] == 1.0 and scales["fc_norm.weight"] == 1.0
    assert scales["blocks.1.attn.qkv.weight"] == pytest.approx(0.8)
    assert scales["blocks.0.mlp.fc2.weight"] == pytest.approx(0.8 ** 2)
    assert scales["cls_token"] == pytest.approx(0.8 ** 3) and scales["patch_embed.proj.weight"] == pytest.approx(0.8 ** 3)


def test_ema_follows_the_formula_and_tracks_the_weights():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 7
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, start + 0.5)  # 0.5 * old + 0.5 * new
    assert not torch.equal(ema.module[0].weight, model[0].weight)
    assert int(ema.module[1].num_batches_tracked) == 7  # integer buffers are copied
    for _ in range(40):
        ema.update(model)
    assert torch.allclose(ema.module[0].weight, model[0].weight, atol=1e-6)
    assert not any(p.requires_grad for p in ema.parameters())
    ema.train()
    assert not ema.module.training  # the copy is always evaluated without dropout / drop path


def test_ema_warmup_ramps_the_decay():
    ema = ModelEMA(torch.nn.Linear(2, 2), decay=0.9999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates.fill_(90)
    assert ema.current_decay() == pytest.approx(91 / 100)
    assert ModelEMA(torch.nn.Linear(2, 2), decay=0.9999).current_decay() == 0.9999


def test_task_updates_ema_on_step_end_and_saves_it():
    model = build_classifier(MODEL, 4)
    task = FinetuneTask(model, 4, ema_decay=0.9)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    task.on_step_end(0)
    assert torch.allclose(task.ema.module.head.bias, model.head.bias * 0.1, atol=1e-6)
    state = task.state_dict()
    assert "ema.module.head.bias" in state and int(state["ema.num_updates"]) == 1
    # a fresh task restores the EMA from the state dict (resume)
    other = FinetuneTask(build_classifier(MODEL, 4), 4, ema_decay=0.9)
    other.load_state_dict(state)
    assert torch.equal(other.ema.module.head.bias, task.ema.module.head.bias)


def test_evaluate_reports_ema_and_raw_weights():
    model = build_classifier(MODEL, 3, drop_path_rate=0.0)
    images, labels = _batch(n=8, k=3)
    loader = [(images[:4], labels[:4]), None, (images[4:], labels[4:])]
    task = FinetuneTask(model, 3, ema_decay=0.5, val_loader=loader)
    with torch.no_grad():
        model.head.weight.normal_()
    metrics = task.evaluate(step=0)
    assert set(metrics) == {"acc1", "acc5", "loss", "raw_acc1", "raw_acc5", "raw_loss"}
    assert metrics["acc5"] == 1.0  # top-min(5, C) with C = 3
    assert metrics == {**metrics, **{f"raw_{k}": v for k, v in evaluate_classifier(model, loader).items()}}
    assert metrics["loss"] != metrics["raw_loss"]  # the EMA still holds the initial head
    assert FinetuneTask(model, 3).evaluate(0) == {}  # no validation loader: nothing to report


def test_build_classifier_from_checkpoints_keeps_or_replaces_the_head(tmp_path):
    from openeva.factory import create_model, save_model

    source = create_model(MODEL, num_classes=3)
    save_model(source, tmp_path / "ck3")
    same = build_classifier(str(tmp_path / "ck3"), 3)
    assert torch.equal(same.head.weight, source.head.weight)  # a matching head is fine-tuned further
    other = build_classifier(str(tmp_path / "ck3"), 5, drop_path_rate=0.2)
    assert other.head.out_features == 5 and other.head.weight.abs().max() < 1e-3  # new head, EVA init x0.001
    assert torch.equal(other.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert other.cfg.drop_path_rate == 0.2 and other.spec.config.num_classes == 5

    clip_tower = build_classifier("EVA02-test", 4)
    assert clip_tower.head.out_features == 4 and clip_tower.spec.name == "EVA02-test-visual"

    built = build_classifier(source, 4)
    assert built is not source and source.head.out_features == 3  # the caller's model is not modified


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 1}, "at least 2 classes"),
    ({"num_classes": 4, "patch_embed_grad_scale": 2.0}, "patch_embed_grad_scale"),
])
def test_build_classifier_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_classifier(MODEL, **kwargs)


def test_build_classifier_rejects_non_eva_models():
    with pytest.raises(ValueError, match="EVA ViT"):
        build_classifier(torch.nn.Linear(2, 2), 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 5}, "head has 4 outputs"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"layer_decay": 0.0}, "layer_decay"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"mixup": -1.0}, "mixup"),
    ({"mixup_mode": "pixel"}, "mixup_mode"),
])
def test_task_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FinetuneTask(build_classifier(MODEL, 4), **kwargs)


def test_transforms_randaugment_train_and_eval_crop():
    train, val = finetune_transforms({"size": (32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    assert "RandAugment" in repr(train) and "RandAugment" not in repr(val)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8))  # grayscale
    assert train(img).shape == (3, 32, 32) and val(img.convert("RGB")).shape == (3, 32, 32)
    plain, _ = finetune_transforms({"size": 32}, auto_augment=None)
    assert "RandAugment" not in repr(plain)
    with pytest.raises(ValueError, match="scale"):
        finetune_transforms({"size": 32}, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="auto_augment"):
        finetune_transforms({"size": 32}, auto_augment="randaug9")
