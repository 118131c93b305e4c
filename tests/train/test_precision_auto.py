"""precision=auto in the engine and the MIM teacher: resolved by the hardware, printed, recorded in the run."""

import json

import pytest

from openeva import runtime
from openeva.configs import CONFIG_DIR
from openeva.train.config import load_config
from openeva.train.runner import train

QUIET = ["progress=false", "tensorboard=false", "plot=false", "data.val=none", "data.zeroshot=none"]
SHORT = ["schedule.total_steps=1", "schedule.warmup_steps=0", "data.batch_size=8", "data.train_num_samples=8"]


@pytest.mark.parametrize("native_bf16,expected", [(False, "fp32"), (True, "bf16")])
def test_engine_resolves_auto_and_records_it(tmp_path, monkeypatch, capsys, native_bf16, expected):
    monkeypatch.setattr(runtime, "_mkldnn_bf16", lambda: native_bf16)
    cfg = load_config(CONFIG_DIR / "clip_tiny.py", [f"output_dir={tmp_path}", "name=r", *QUIET, *SHORT])
    assert cfg.precision == "auto"  # the CPU recipe leaves the choice to the hardware
    train(cfg)
    info = json.loads((tmp_path / "r" / "precision.json").read_text())
    assert info["requested"] == "auto" and info["precision"] == expected and info["cpu_capability"]
    assert f"precision auto -> {expected}: " in capsys.readouterr().out


def test_explicit_precision_is_kept_by_the_engine(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "_mkldnn_bf16", lambda: True)
    train(load_config(CONFIG_DIR / "clip_tiny.py", [f"output_dir={tmp_path}", "name=e", "precision=fp32",
                                                      *QUIET, *SHORT]))
    info = json.loads((tmp_path / "e" / "precision.json").read_text())
    assert info["precision"] == "fp32" and info["reason"] == "set explicitly"


def test_mim_teacher_precision_auto(monkeypatch):
    from openeva.train.mim_task import build_mim_task

    monkeypatch.setattr(runtime, "_mkldnn_bf16", lambda: False)
    cfg = load_config(CONFIG_DIR / "mim_tiny.py", [])
    assert cfg.task_options["teacher_precision"] == "auto"
    assert build_mim_task(cfg, device="cpu").teacher.precision == "fp32"
    monkeypatch.setattr(runtime, "_mkldnn_bf16", lambda: True)
    assert build_mim_task(cfg, device="cpu").teacher.precision == "bf16"
