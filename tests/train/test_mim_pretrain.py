"""`openeva pretrain` end to end on the tiny config: run directory, final export, exact resume, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from openeva.checkpoints import read_config, read_state_dict
from openeva.cli import main
from openeva.configs import CONFIG_DIR
from openeva.train.checkpointing import sharded_keys
from openeva.train.config import load_config
from openeva.train.mim_task import MIMOptions, pretrain, preflight_mim

CONFIG = CONFIG_DIR / "mim_tiny.py"
SMALL = ["data.train_num_samples=64", "data.batch_size=16", "data.val_num_samples=16", "schedule.warmup_steps=1",
         "schedule.total_steps=4", "save_every=2", "log_every=1", "eval_every=0", "progress=false",
         "tensorboard=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", str(CONFIG), f"output_dir={out}", "name=full", *SMALL]) == 0
    return out / "full"


def test_pretrain_cli_writes_the_engine_run_directory(run):
    for name in ("config.json", "metrics.jsonl", "param_groups.json", "plots/training.png", "checkpoints/latest",
                 "final/model.safetensors"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all("cos_sim" in r and "mask_ratio" in r and r["mask_ratio"] == pytest.approx(6 / 16) for r in train)
    val = [r for r in rows if r["split"] == "val"]
    assert val and val[-1]["step"] == 4 and "cos_sim" in val[-1]
    assert json.loads((run / "config.json").read_text())["task"] == "mim"  # the registered name mim_tiny uses


def test_final_directory_is_a_plain_backbone_both_loaders_take(run):
    from openeva.factory import create_model
    from openeva.train.clip_task import build_clip_model
    from openeva.train.config import EVA_CLIP_SKIP_LIST, ModelConfig

    final = run / "final"
    cfg = read_config(final)
    assert cfg["model_config"]["global_pool"] == "avg" and cfg["model_config"]["mask_token"] is False
    sd = read_state_dict(final)
    assert {"mask_token", "lm_head.weight", "norm.weight"} <= set(sd)
    backbone = create_model(str(final))
    torch.testing.assert_close(backbone.fc_norm.weight, sd["norm.weight"])
    clf = create_model(str(final), num_classes=5)
    assert clf(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    # `openeva train ... model.pretrained_image=RUN/final`; EVA-CLIP's sub-LN on merged heads starts fresh
    skip = EVA_CLIP_SKIP_LIST + ("blocks.*.attn.norm.*",)
    clip = build_clip_model(ModelConfig(name="EVA02-test", pretrained_image=str(final), skip_list=skip))
    torch.testing.assert_close(clip.visual.norm.weight, sd["norm.weight"])
    torch.testing.assert_close(clip.visual.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])


def test_interrupted_and_resumed_run_matches_the_uninterrupted_one(run, tmp_path):
    """Exact resume: masks and crops are per-sample seeded; the frozen teacher is rebuilt, not checkpointed."""
    cfg = load_config(CONFIG, [f"output_dir={tmp_path}", "name=resumed", *SMALL, "max_steps_this_run=2"])
    pretrain(cfg)
    keys = sharded_keys(tmp_path / "resumed" / "checkpoints" / "step_0000002")
    assert keys and not any(k.startswith("teacher.") for k in keys)
    assert not (tmp_path / "resumed" / "final").exists()
    pretrain(cfg.replace(resume="latest", max_steps_this_run=None))
    a, b = read_state_dict(run / "final"), read_state_dict(tmp_path / "resumed" / "final")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_dry_run_validates_and_prints_the_config(tmp_path, capsys):
    assert main(["pretrain", str(CONFIG), f"output_dir={tmp_path}", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("precision auto -> ")  # the resolved precision and why, dry run included
    printed = json.loads(captured.out)
    assert printed["name"] == "mim_tiny" and printed["task_options"]["num_masking_patches"] == 6
    assert not (tmp_path / "mim_tiny").exists()


@pytest.mark.parametrize("override, message", [
    ("task_options.num_masked=3", "did you mean num_masking_patches"),
    ("task_options.teacher=eva02_test_patch8_32", "not a CLIP model"),
    ("task_options.teacher_pretrained=None", "teacher_pretrained is not set"),
    ("task_options.teacher_pretrained=/no/such/teacher.pt", "checkpoint not found"),
    ("task_options.target=dino", "target"),
    ("task_options.num_masking_patches=17", "num_masking_patches"),
    ("model.name=EVA02-test", "is a CLIP model"),
    ("data.train=/no/such/captions.csv", "not found"),
])
def test_bad_mim_configs_fail_before_compute(override, message, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=message):  # options fail when the config is built
        preflight_mim(load_config(CONFIG, [f"output_dir={tmp_path}", override]))


def test_pretrain_refuses_a_non_mim_config(tmp_path, capsys):
    clip_cfg = CONFIG_DIR / "clip_tiny.py"
    assert main(["pretrain", str(clip_cfg), f"output_dir={tmp_path}"]) == 2
    assert "not MIM pretraining" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not MIM pretraining"):
        pretrain(load_config(clip_cfg, [f"output_dir={tmp_path}"]))


@pytest.mark.parametrize("name", ["mim_ti", "mim_s", "mim_b", "mim_l"])
def test_published_recipes_load_with_the_paper_hyperparameters(name):
    cfg = load_config(CONFIG.parent / f"{name}.py")
    peak = {"mim_ti": 3e-3, "mim_s": 3e-3, "mim_b": 1.5e-3, "mim_l": 1.5e-3}[name]
    assert cfg.optim.lr == peak and cfg.optim.betas == (0.9, 0.98) and cfg.optim.eps == 1e-6
    assert cfg.optim.weight_decay == 0.05 and cfg.optim.grad_clip == 3.0
    assert cfg.schedule.scheduler == "cosine" and cfg.schedule.min_lr_ratio * peak == pytest.approx(1e-5)
    assert cfg.schedule.epochs == {"mim_ti": 240, "mim_s": 240, "mim_b": 150, "mim_l": 150}[name]
    assert (cfg.model.drop_path_rate or 0.0) == (0.1 if name == "mim_l" else 0.0)
    assert cfg.data.scale == (0.2, 1.0)
    opts = MIMOptions.from_dict(cfg.task_options)
    assert (opts.num_masking_patches or 105) == 105 and opts.min_num_patches == 16 and opts.min_aspect == 0.3
    assert opts.patch_embed_grad_scale == 0.1 and opts.target == "clip"


def _class_folder(root: Path, n_per_class: int = 6) -> Path:
    """An ImageNet-style folder: one sub-folder per class, images without caption files."""
    from PIL import Image

    for c, color in enumerate(((200, 30, 30), (30, 200, 30))):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n_per_class):
            Image.new("RGB", (40, 36), tuple(v + 3 * i for v in color)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_pretrain_reads_images_without_captions(tmp_path):
    """MIM ignores captions: a class folder and a caption-less tar shard train instead of being skipped."""
    from openeva.data.webdataset import write_shards

    folder = _class_folder(tmp_path / "folder")
    common = [f"output_dir={tmp_path}", "data.batch_size=4", "data.train_num_samples=8", "data.val=null",
              "schedule.warmup_steps=1", "schedule.total_steps=2", "save_every=2", "log_every=1", "eval_every=0",
              "progress=false", "tensorboard=false"]
    assert main(["pretrain", str(CONFIG), "name=folder", f"data.train={folder}", *common]) == 0
    rows = [json.loads(x) for x in (tmp_path / "folder" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and train[-1]["skipped_samples"] == 0

    images = sorted(folder.rglob("*.png"))
    shard = write_shards([{"png": p.read_bytes(), "cls": 0} for p in images], tmp_path / "shards", shard_size=100)
    assert main(["pretrain", str(CONFIG), "name=tar", f"data.train={shard[0]}", *common]) == 0
    rows = [json.loads(x) for x in (tmp_path / "tar" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
