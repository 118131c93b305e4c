"""CLIP training with a timm vision tower, chosen by a config override (``model.vision.timm_name=...``): two
optimizer steps with layer decay from timm's group matcher, and the run's final model rebuilt with that tower."""

import json
from pathlib import Path

import numpy as np
import pytest

from openeva.configs import CONFIG_DIR
from openeva.factory import create_model
from openeva.models.timm_tower import TimmTower
from openeva.train.config import load_config
from openeva.train.runner import train

QUIET = ["progress=false", "tensorboard=false", "plot=false", "data.val=none", "data.zeroshot=none", "log_every=1"]


def test_two_steps_of_a_clip_with_a_timm_tower(tmp_path):
    cfg = load_config(CONFIG_DIR / "clip_tiny.py", [
        f"output_dir={tmp_path}", *QUIET, "name=timm", "model.vision.timm_name=test_convnext", "model.vision.pool=avg",
        "model.img_size=64", "optim.visual_layer_decay=0.8", "schedule.total_steps=2", "schedule.warmup_steps=0",
        "data.batch_size=4", "data.train_num_samples=8", "precision=fp32"])
    assert cfg.model.vision.timm_name == "test_convnext"
    init = create_model("EVA02-test", timm_name="test_convnext", timm_pool="avg", img_size=64)
    out = train(cfg)
    assert out["step"] == 2 and np.isfinite(out["loss"])
    run = Path(tmp_path) / "timm"
    model = create_model(str(run / "final"))
    assert isinstance(model.visual, TimmTower) and model.visual.cfg.timm_name == "test_convnext"
    assert model.visual.cfg.img_size == (64, 64)
    saved = json.loads((run / "final" / "config.json").read_text())
    assert saved["model_config"]["vision"]["kind"] == "timm"
    # layer decay from timm's group matcher: one lr scale per trunk group, the stem lowest, the head at 1
    groups = json.loads((run / "param_groups.json").read_text())
    visual = {g["name"].split("_")[1]: g["lr_scale"] for g in groups if g["name"].startswith("model.visual_layer")}
    top = init.visual.num_layers - 1
    assert len(visual) == init.visual.num_layers
    assert visual["layer0"] == pytest.approx(0.8 ** top, rel=1e-4) and visual[f"layer{top}"] == 1.0


def test_tower_options_without_a_timm_name_are_refused(tmp_path):
    with pytest.raises(ValueError, match="model.vision.pool"):
        load_config(CONFIG_DIR / "clip_tiny.py", [f"output_dir={tmp_path}", "model.vision.pool=avg"])
