"""TrainConfig: validation, key=value overrides by field type, Python config files, published recipes, and
config errors failing before any compute."""

import json
import re

import pytest

from openeva.train.config import (
    DataConfig, OptimConfig, ScheduleConfig, TrainConfig, apply_overrides, load_config,
)

from openeva.configs import CONFIG_DIR


def _cfg(**kw):
    return TrainConfig(schedule=ScheduleConfig(total_steps=10, warmup_steps=2), **kw)


def test_overrides_are_parsed_by_field_type():
    cfg = apply_overrides(_cfg(), [
        "optim.lr=1e-3", "data.batch_size=16", "data.scale=0.5,1", "optim.betas=(0.9,0.95)", "model.img_size=none",
        "model.grad_checkpointing=true", "name=r2", "optim.grad_clip=None", "task_options.teacher=EVA02-B-16",
        "data.train_weights=0.7,0.3", "data.train=a.csv;b.csv",
    ])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.data.batch_size, int) and cfg.data.batch_size == 16
    assert cfg.data.scale == (0.5, 1.0) and cfg.optim.betas == (0.9, 0.95)
    assert cfg.model.img_size is None and cfg.model.grad_checkpointing is True and cfg.optim.grad_clip is None
    assert cfg.name == "r2" and cfg.task_options == {"teacher": "EVA02-B-16"}
    assert cfg.data.train_weights == (0.7, 0.3) and cfg.data.sources() == ["a.csv", "b.csv"]


def test_task_option_overrides_are_parsed_by_the_options_type():
    """``task_options.ema_warmup=true`` is the bool the finetune options declare, as ``model.*=true`` is (it was
    the string 'true' and then rejected as not a bool); a free-form option keeps the literal-or-string rule."""
    cfg = apply_overrides(TrainConfig(task="finetune", schedule=ScheduleConfig(total_steps=10, warmup_steps=2)), [
        "task_options.ema_warmup=true", "task_options.ema_decay=0.99", "task_options.auto_augment=none",
        "task_options.label_smoothing=0", "task_options.hflip=0.5"])
    assert cfg.task_options["ema_warmup"] is True and cfg.task_options["ema_decay"] == 0.99
    assert cfg.task_options["auto_augment"] is None and cfg.task_options["label_smoothing"] == 0.0
    with pytest.raises(ValueError, match="ema_warmup.*true or false"):
        apply_overrides(TrainConfig(task="finetune", schedule=ScheduleConfig(total_steps=10, warmup_steps=2)),
                        ["task_options.ema_warmup=maybe"])


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=1", ["optim.lrr", "optim.lr"]),
    ("lr=1", ["'lr'", "optim.lr"]),
    ("batch_size=4", ["data.batch_size"]),
    ("optim.lr=fast", ["optim.lr", "number"]),
    ("data.batch_size=2.5", ["data.batch_size", "integer"]),
    ("optim.optimizer=sgd", ["optim.optimizer", "adamw", "lamb"]),
    ("precision=fp8", ["precision", "bf16"]),
    ("model.grad_checkpointing=maybe", ["model.grad_checkpointing", "true or false"]),
    ("data.scale=0.5", ["data.scale", "2"]),
    ("schedule.warmup_steps=50", ["schedule.warmup_steps", "total_steps"]),
    ("schedule.epochs=3", ["schedule.total_steps", "epochs"]),
    ("optim.visual_layer_decay=1.5", ["optim.visual_layer_decay"]),
    ("noequals", ["key=value"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ValueError) as e:
        apply_overrides(_cfg(), [override])
    for w in words:
        assert w in str(e.value)


def test_json_round_trip_and_run_config_reload(tmp_path):
    cfg = apply_overrides(_cfg(), ["optim.betas=0.8,0.9", "task_options.k=3"])
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert load_config(tmp_path / "config.json", ["seed=5"]) == cfg.replace(seed=5)
    with pytest.raises(ValueError, match="optim.typo"):
        TrainConfig.from_dict({"optim": {"typo": 1}})


def test_python_config_file(tmp_path):
    good = tmp_path / "good.py"
    good.write_text("from openeva.train.config import *\n"
                    "config = TrainConfig(schedule=ScheduleConfig(total_steps=5, warmup_steps=0))\n")
    assert load_config(good, ["optim.lr=0.1"]).optim.lr == 0.1
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="config = TrainConfig"):
        load_config(bad)
    invalid = tmp_path / "invalid.py"
    invalid.write_text("from openeva.train.config import *\nconfig = TrainConfig(optim=OptimConfig(lr=-1), "
                       "schedule=ScheduleConfig(total_steps=5, warmup_steps=0))\n")
    with pytest.raises(ValueError, match="optim.lr"):
        load_config(invalid)
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(tmp_path / "nope.py")


def test_published_recipes_hold_the_eva_clip_hyperparameters():
    b16 = load_config(CONFIG_DIR / "clip_eva02_b16.py")
    l14 = load_config(CONFIG_DIR / "clip_eva02_l14.py")
    for cfg in (b16, l14):
        o = cfg.optim
        assert (o.optimizer, o.lr, o.weight_decay, o.grad_clip) == ("lamb", 5e-4, 0.05, 5.0)
        assert cfg.schedule.warmup_steps == 2000 and cfg.schedule.scheduler == "cosine"
        assert cfg.loss.local_loss and cfg.loss.gather_with_grad and cfg.model.grad_checkpointing
        assert cfg.model.patch_dropout == 0.0 and cfg.data.scale == (0.9, 1.0)
        assert "text_projection" in cfg.model.skip_list and "logit_scale" in cfg.model.skip_list
        # Merged-2B: whole batches alternating between LAION-2B and COYO-700M at 1.6B : 0.4B, resampled shards
        d = cfg.data
        assert (d.mix, d.train_weights, d.resampled, len(d.sources())) == ("batch", (0.8, 0.2), True, 2)
        assert "laion2b" in d.sources()[0] and "coyo700m" in d.sources()[1]
    assert b16.model.name == "EVA02-B-16" and l14.model.name == "EVA02-L-14"
    assert (b16.optim.visual_lr, b16.optim.visual_layer_decay, b16.optim.text_lr, b16.optim.text_layer_decay) == (
        2e-4, 0.75, 2e-5, 0.75)
    assert (l14.optim.visual_lr, l14.optim.visual_layer_decay, l14.optim.text_lr, l14.optim.text_layer_decay) == (
        4e-4, 0.85, 4e-5, 0.75)
    assert b16.data.batch_size * 64 == 131072 == l14.data.batch_size * 128
    assert b16.schedule.epochs * b16.data.train_num_samples == 8_000_000_000
    assert l14.schedule.epochs * l14.data.train_num_samples == 4_000_000_000


@pytest.mark.parametrize("override, exc, words", [
    ("data.train=/no/such/pairs.csv", FileNotFoundError, ["/no/such/pairs.csv", "data.train"]),
    ("data.train=/no/such/shard-{000..003}.tar", FileNotFoundError, ["data.train", "shard-000.tar"]),
    ("data.val=/no/such/val.csv", FileNotFoundError, ["data.val"]),
    ("model.pretrained_image=/no/mim.pt", FileNotFoundError, ["model.pretrained_image", "/no/mim.pt"]),
    ("model.name=EVA02-nope", ValueError, ["model.name", "EVA02-nope"]),
    ("model.name=eva02_test_patch8_32", ValueError, ["backbone"]),
    ("resume=/no/ckpt", FileNotFoundError, ["resume"]),
])
def test_config_errors_fail_before_any_compute(tmp_path, monkeypatch, override, exc, words):
    import openeva.train.clip_task as clip_task
    from openeva.train.runner import train

    def no_compute(*a, **k):
        raise AssertionError("a model was built before the config was checked")

    monkeypatch.setattr(clip_task, "build_clip_model", no_compute)
    cfg = load_config(CONFIG_DIR / "clip_tiny.py", [f"output_dir={tmp_path}", override])
    with pytest.raises(exc) as e:
        train(cfg)
    for w in words:
        assert w in str(e.value)


def test_cli_dry_run_and_error_message(tmp_path, capsys):
    from openeva.cli import main

    assert main(["train", str(CONFIG_DIR / "clip_tiny.py"), f"output_dir={tmp_path}", "optim.lr=0.01",
                 "--dry-run"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["optim"]["lr"] == 0.01 and printed["name"] == "clip_tiny"
    assert re.match(r"precision auto -> (fp32|bf16): ", captured.err)  # the resolved precision and why
    assert not (tmp_path / "clip_tiny").exists()  # a dry run writes nothing
    assert main(["train", str(CONFIG_DIR / "clip_tiny.py"), "data.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size" in err and err.startswith("openeva train: error: ") and err.count("\n") == 1


def test_an_existing_run_is_only_continued_with_resume(tmp_path):
    from openeva.train.runner import check_run_dir

    cfg = _cfg(output_dir=str(tmp_path), name="r")
    step = tmp_path / "r" / "checkpoints" / "step_0000001"
    step.mkdir(parents=True)
    (step / "train_state.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="resume=latest"):
        check_run_dir(cfg)
    assert DataConfig().sources() == ["synthetic"] and OptimConfig().accum_steps == 1


def test_shipped_recipes_load_by_name():
    from openeva.configs import builtin_configs
    from openeva.configs import load_config  # the lookup by name lives with the recipes (train imports no configs)

    names = builtin_configs()
    assert {"clip_tiny", "clip_eva02_b16", "clip_eva02_l14", "mim_ti", "mim_s", "mim_b", "mim_l", "mim_tiny",
            "finetune_eva02_B", "finetune_eva02_L", "finetune_tiny"} <= set(names)
    assert all(not n.startswith("_") for n in names)
    assert load_config("clip_tiny") == load_config(CONFIG_DIR / "clip_tiny.py")
    assert load_config("mim_b.py", ["optim.lr=1e-3"]).optim.lr == 1e-3
    with pytest.raises(FileNotFoundError, match="nor a shipped recipe: .*clip_tiny"):
        load_config("clip_tinyy")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config("some/dir/clip_tiny.py")  # a path is never replaced by a shipped recipe
