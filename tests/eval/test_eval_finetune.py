"""``evaluate(model, EvalConfig(tasks=("finetune",), ...))`` / ``openeva eval --task finetune``: fine-tune on the training split with
the engine, report top-1 / top-5 on the evaluation split in a valid result JSON; bad input fails first."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openeva.cli import main
from openeva.eval import EvalConfig, FinetuneEvalOptions, evaluate, load_results
from openeva.configs import CONFIG_DIR
from openeva.eval import finetune as finetune_mod

COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
FAST = ["schedule.epochs=2", "data.batch_size=16", "optim.lr=3e-3", "task_options.auto_augment=none",
        "model.drop_path_rate=0", "data.scale=0.5,1.0"]


def color_folder(root: Path, per_class: int, seed: int, colors=COLORS) -> Path:
    rng = np.random.default_rng(seed)
    for k, color in enumerate(colors):
        (root / f"class{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(color) + rng.integers(-60, 61, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{k}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune_data")
    return color_folder(root / "train", 16, seed=0), color_folder(root / "val", 8, seed=1)


def test_cli_finetune_writes_a_valid_result(splits, tmp_path, capsys):
    train, val = splits
    out = tmp_path / "results"
    argv = ["eval", "--model", "eva02_test_patch8_32", "--task", "finetune", "--dataset", str(val),
            "--train-dataset", str(train), "--output", str(out), "--no-progress"]
    for item in FAST:
        argv += ["--set", item]
    argv += ["--finetune-set", "task_options.ema_decay=0.5"]  # the older name of --set, kept
    torch.manual_seed(0)
    assert main(argv) == 0
    (result,) = load_results([out])  # schema-checked
    assert result["task"] == "finetune" and result["model"] == "eva02_test_patch8_32"
    assert set(result["metrics"]) >= {"acc1", "acc5", "mean_per_class_recall"}
    assert result["metrics"]["acc1"] >= 0.8  # 3 colour classes, chance 1/3
    assert result["num_samples"] == 24 and result["num_train"] == 48 and result["steps"] == 6
    assert result["ema"] is True and result["recipe"]["ema_decay"] == 0.5
    run = Path(result["run_dir"])
    assert (run / "final" / "config.json").exists() and (run / "metrics.jsonl").exists()
    assert all(Path(p).exists() for p in result["plots"])
    assert "finetune" in capsys.readouterr().out  # the printed table


def test_finetune_a_built_clip_tower_without_output_dir(splits):
    from openeva.factory import create_model

    train, val = splits
    clip = create_model("EVA02-test")
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    config = EvalConfig(tasks="finetune", dataset=str(val), train_dataset=str(train),
                        finetune=FinetuneEvalOptions(overrides=FAST), model_name="EVA02-test", progress=False,
                        make_plots=False)
    (result,) = evaluate(clip, config)
    assert result["task"] == "finetune" and result["run_dir"] is None and 0.0 <= result["metrics"]["acc1"] <= 1.0
    assert all(torch.equal(v, before[k]) for k, v in clip.state_dict().items())  # the caller's model is untouched


def _no_compute(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("fine-tuning started before the inputs were checked")

    monkeypatch.setattr(finetune_mod, "run_finetune", boom)


def test_bad_input_fails_before_any_compute(splits, tmp_path, monkeypatch):
    train, val = splits
    _no_compute(monkeypatch)

    def cfg(dataset=val, train_dataset=train, overrides=(), **options):
        return EvalConfig(tasks="finetune", dataset=str(dataset), progress=False,
                          train_dataset=None if train_dataset is None else str(train_dataset),
                          finetune=FinetuneEvalOptions(overrides=overrides), **options)

    one_class = color_folder(tmp_path / "one", 4, seed=0, colors=COLORS[:1])
    with pytest.raises(ValueError, match="at least 2"):
        evaluate("eva02_test_patch8_32", cfg(train_dataset=one_class))
    with pytest.raises(ValueError, match="training dataset"):
        evaluate("eva02_test_patch8_32", cfg(train_dataset=None))
    with pytest.raises(FileNotFoundError):
        evaluate("eva02_test_patch8_32", cfg(train_dataset=tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown config key"):
        evaluate("eva02_test_patch8_32", cfg(overrides=["optim.learning_rate=1"]))
    with pytest.raises(ValueError, match="unknown task_options"):
        evaluate("eva02_test_patch8_32", cfg(overrides=["task_options.smoothing=0.1"]))
    with pytest.raises(ValueError, match="unknown model"):
        evaluate("eva02_nope", cfg())
    with pytest.raises(ValueError, match="EVA ViT"):
        evaluate(torch.nn.Linear(2, 2), cfg(model_name="x"))
    extra = color_folder(tmp_path / "extra", 2, seed=0, colors=COLORS + [(9, 9, 9)])
    with pytest.raises(ValueError, match="does not have"):
        evaluate("eva02_test_patch8_32", cfg(dataset=extra))


def test_config_file_must_be_a_finetune_recipe(tmp_path):
    cfg = finetune_mod.load_finetune_config(CONFIG_DIR / "finetune_eva02_L.py", ["schedule.epochs=1"])
    assert cfg.optim.lr == 7e-5 and cfg.optim.layer_decay == 0.8 and cfg.schedule.epochs == 1
    assert cfg.task_options["label_smoothing"] == 0.2 and cfg.task_options["ema_decay"] == 0.9999
    with pytest.raises(ValueError, match="task="):
        finetune_mod.load_finetune_config(CONFIG_DIR / "clip_tiny.py")
    with pytest.raises(FileNotFoundError):
        finetune_mod.load_finetune_config(tmp_path / "missing.py")


def test_cli_reports_finetune_input_errors(splits, tmp_path, capsys):
    train, val = splits
    assert main(["eval", "--model", "eva02_test_patch8_32", "--task", "finetune", "--dataset", str(val),
                 "--output", str(tmp_path / "o")]) == 2
    assert "training dataset" in capsys.readouterr().err


def test_the_recipes_own_pretrained_weights_are_kept(splits, tmp_path, capsys):
    """Without --pretrained, the recipe's model.pretrained is used (here a missing file: refused by name),
    never silently replaced by random weights."""
    train, val = splits
    missing = tmp_path / "no_such_ckpt.safetensors"
    argv = ["eval", "--model", "eva02_test_patch8_32", "--task", "finetune", "--dataset", str(val),
            "--train-dataset", str(train), "--out", str(tmp_path / "results"), "--no-progress"]
    for item in FAST + [f"model.pretrained={missing}"]:
        argv += ["--set", item]
    assert main(argv) == 2  # main is the one error boundary: a bad input is exit code 2 and one line, never raised
    err = capsys.readouterr().err
    assert missing.name in err and len(err.strip().splitlines()) == 1
