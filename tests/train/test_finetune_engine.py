"""Fine-tuning through the one training engine: it learns a small task, layer decay reaches the optimizer,
the EMA weights are what the run exports, and bad configs fail in preflight."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openeva.train.config import DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from openeva.train.distributed import World
from openeva.train.finetune_task import build_finetune, preflight_finetune
from openeva.train.optim import param_groups

TASK = "openeva.train.finetune_task:build_finetune"
COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def color_folder(root: Path, per_class: int, seed: int, colors=COLORS) -> Path:
    """``root/c<k>/<i>.png``: class k is colour k plus strong per-pixel noise (linearly separable)."""
    rng = np.random.default_rng(seed)
    for k, color in enumerate(colors):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-60, 61, (16, 16, 3))
            Image.fromarray(np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)).save(root / f"c{k}" / f"{i}.png")
    return root


def make_cfg(tmp_path, train, val, **task_options) -> TrainConfig:
    return TrainConfig(
        task=TASK, output_dir=str(tmp_path / "runs"), name="ft", progress=False, tensorboard=False, plot=False,
        model=ModelConfig(name="eva02_test_patch8_32", drop_path_rate=0.0),
        data=DataConfig(train=str(train), batch_size=32, val=None if val is None else str(val), zeroshot=None,
                        scale=(0.5, 1.0)),
        optim=OptimConfig(lr=3e-3, layer_decay=0.8, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8, grad_clip=None),
        schedule=ScheduleConfig(warmup_steps=3, epochs=3), log_every=4, save_every=1000,
        task_options={"auto_augment": None, "label_smoothing": 0.1, **task_options},
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("colors")
    return color_folder(root / "train", 32, seed=0), color_folder(root / "val", 16, seed=1)


def test_finetuning_learns_and_exports_the_ema_weights(folders, tmp_path):
    from openeva.factory import create_model
    from openeva.train.engine import Trainer
    from openeva.train.finetune_task import evaluate_classifier

    train, val = folders
    cfg = make_cfg(tmp_path, train, val, ema_decay=0.8, ema_warmup=True)
    preflight_finetune(cfg)
    torch.manual_seed(0)
    task, loader = build_finetune(cfg, World())
    before = evaluate_classifier(task.model, task.val_loader)
    summary = Trainer(cfg, task, loader, World(), Path(cfg.output_dir) / cfg.name).fit()
    assert summary["step"] == 12  # 128 images / batch 32 x 3 epochs
    after = task.evaluate(summary["step"])
    assert after["acc1"] >= 0.9 and after["raw_acc1"] >= 0.9  # chance: 0.25
    assert after["loss"] < before["loss"] - 0.5  # before ~ ln 4 = 1.39 (the head starts at ~0)
    # RUN/final is the EMA copy, loadable by name-free create_model, with the 4-class head
    final = create_model(str(Path(summary["run_dir"]) / "final"))
    assert final.head.out_features == 4
    ema_state = task.ema.module.state_dict()
    assert all(torch.equal(v, ema_state[k]) for k, v in final.state_dict().items())
    assert not torch.equal(ema_state["head.weight"], task.model.head.weight)


def test_layer_decay_reaches_the_optimizer_groups(folders, tmp_path):
    cfg = make_cfg(tmp_path, *folders, ema_decay=0.9)
    task, _ = build_finetune(cfg, World())
    groups = param_groups(task, task.param_group_specs(), base_lr=1.0, weight_decay=0.05)
    scale = {name: g["lr_scale"] for g in groups for name in g["param_names"]}
    depth = task.model.cfg.depth  # ids: 0 embeddings, 1..depth blocks, depth + 1 fc_norm / head
    assert scale["model.head.weight"] == 1.0 and scale["model.fc_norm.bias"] == 1.0
    for i in range(depth):
        assert scale[f"model.blocks.{i}.attn.qkv.weight"] == pytest.approx(0.8 ** (depth - i))
    assert scale["model.cls_token"] == pytest.approx(0.8 ** (depth + 1))
    assert not any(n.startswith("model.patch_embed") for n in scale)  # detached: frozen, not optimised
    assert not any(n.startswith("ema.") for n in scale)  # the EMA copy is never optimised
    decay = {name: g["weight_decay"] for g in groups for name in g["param_names"]}
    assert decay["model.blocks.0.mlp.fc1.weight"] == 0.05 and decay["model.pos_embed"] == 0.0


def test_synthetic_shapes_build(tmp_path):
    cfg = make_cfg(tmp_path, "synthetic", "synthetic", synthetic_attribute="color").replace(
        data=DataConfig(train="synthetic", train_num_samples=64, batch_size=16, val="synthetic", val_num_samples=16,
                        zeroshot=None))
    preflight_finetune(cfg)
    task, loader = build_finetune(cfg, World())
    assert task.num_classes == 6 and len(loader) == 4
    images, labels = next(iter(loader.batches(0)))
    loss, _ = task((images, labels))
    assert images.shape == (16, 3, 32, 32) and torch.isfinite(loss)


@pytest.mark.parametrize("change, error, match", [
    ({"task_options": {"mixup_alpha": 0.8}}, ValueError, "unknown task_options"),
    ({"task_options": {"ema_decay": 1.5}}, ValueError, "ema_decay"),
    ({"model": ModelConfig(name="eva02_nope")}, ValueError, "model.name"),
    ({"model": ModelConfig(name="eva02_test_patch8_32", pretrained="/no/such/weights.safetensors")},
     FileNotFoundError, "model.pretrained"),
    ({"model": ModelConfig(name="eva02_test_patch8_32", lock_image=True)}, ValueError, "lock_image"),
])
def test_preflight_rejects_bad_configs(folders, tmp_path, change, error, match):
    with pytest.raises(error, match=match):  # options are checked when the config is built, the rest in preflight
        preflight_finetune(make_cfg(tmp_path, *folders).replace(**change))


def test_preflight_rejects_bad_data(folders, tmp_path):
    train, val = folders
    one_class = color_folder(tmp_path / "one", 4, seed=0, colors=COLORS[:1])
    with pytest.raises(ValueError, match="at least 2"):
        preflight_finetune(make_cfg(tmp_path, one_class, None))
    with pytest.raises(FileNotFoundError, match="data.train"):
        preflight_finetune(make_cfg(tmp_path, tmp_path / "missing", None))
    with pytest.raises(ValueError, match="data.val=synthetic"):
        preflight_finetune(make_cfg(tmp_path, train, "synthetic"))
    extra_class = color_folder(tmp_path / "five", 2, seed=0, colors=COLORS + [(9, 9, 9)])
    with pytest.raises(ValueError, match="does not have"):
        preflight_finetune(make_cfg(tmp_path, train, extra_class))
    with pytest.raises(ValueError, match="num_classes=7"):
        preflight_finetune(make_cfg(tmp_path, train, val, num_classes=7))


def test_engine_runs_the_task_from_its_module_path(folders, tmp_path):
    """``train(cfg)`` finds build and preflight from ``task="module:function"``; preflight runs first."""
    from openeva.train.runner import resolve_task

    entry = resolve_task(TASK)
    assert entry.build is build_finetune and entry.preflight is preflight_finetune
