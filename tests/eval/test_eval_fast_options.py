"""`openeva eval --tome-r/--int8/--precision auto` on a real tiny CLIP: runs, prints its choices, valid results."""

import json

import torch

from openeva.cli import main
from openeva.eval.results import validate_result


def test_eval_with_token_merging_and_int8(make_folder, tmp_path, capsys):
    root = make_folder(per_class=2)
    out = tmp_path / "results"
    assert main(["eval", "--model", "EVA02-test", "--task", "zeroshot", "--dataset", str(root),
                 "--output", str(out), "--batch-size", "4", "--no-progress", "--no-plots",
                 "--tome-r", "2", "--int8", "--cache-dir", str(tmp_path / "cache")]) == 0  # --precision left at auto
    printed = capsys.readouterr().out
    assert "precision auto -> " in printed and "token merging r=2 int8" in printed
    files = list(out.glob("*.json"))
    assert len(files) == 1 and validate_result(json.loads(files[0].read_text()))
    config = json.loads(files[0].read_text())["config"]  # the result says which inference it measured
    assert config["int8"] is True and config["tome_r"] == [2, 2] and config["precision"] == "fp32"
    assert not (tmp_path / "cache").exists()  # merged features never go to (or come from) the unmerged cache


def test_eval_fast_options_refuse_finetune(make_folder, tmp_path, capsys):
    root = make_folder(per_class=1)
    assert main(["eval", "--model", "EVA02-test", "--task", "finetune", "--dataset", str(root),
                 "--train-dataset", str(root), "--tome-r", "2", "--output", str(tmp_path)]) == 2
    assert "frozen-feature tasks" in capsys.readouterr().err


def test_feature_cache_keys_tell_merged_and_int8_models_apart():
    import openeva
    from openeva.eval.features import model_fingerprint

    torch.manual_seed(0)
    model = openeva.create_model("EVA02-test")
    keys = [model_fingerprint(model)]
    openeva.apply_tome(model, 2)
    keys.append(model_fingerprint(model))
    openeva.quantize_int8(model)
    keys.append(model_fingerprint(model))
    torch.manual_seed(1)
    other = openeva.quantize_int8(openeva.apply_tome(openeva.create_model("EVA02-test"), 2))
    keys.append(model_fingerprint(other))  # other int8 weights: another key (packed params are hashed)
    assert len(set(keys)) == 4
