"""The one command-line layer: every command's help, the shared option groups (same defaults, `--output` as an
alias of `--out`, `--set` overrides), and `main` as the one error boundary (exit 2, one line, no traceback)."""

import argparse
import json
import re

import pytest
from PIL import Image

from openeva.cli import build_parser, main, models_cmd
from openeva.configs import CONFIG_DIR

CLIP_TINY = str(CONFIG_DIR / "clip_tiny.py")


def _commands(parser=None, prefix=()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every runnable command (``export onnx``, ``index build``, ...) -> its parser."""
    parser = parser or build_parser()
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, (*prefix, name))
                found.update(nested or {(*prefix, name): sub})
    return found


def _option(parser, flag):
    return next((a for a in parser._actions if flag in a.option_strings), None)


COMMANDS = sorted(_commands())


def test_the_command_table_is_complete():
    assert {c[0] for c in COMMANDS} == {"models", "convert", "quickstart", "train", "pretrain", "eval", "eval-merge",
                                        "export", "embed", "index", "search", "dedup", "classify", "serve", "segment"}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_through_main(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: openeva {' '.join(command)}")


def test_device_defaults_to_auto_in_every_command_that_takes_it():
    takes = {c for c, p in _commands().items() if _option(p, "--device")}
    assert {("eval",), ("segment",), ("embed",), ("classify",), ("search",), ("serve",)} <= takes
    for command in takes:
        parser = _commands()[command]
        assert _option(parser, "--device").default == "auto", command
        assert _option(parser, "--precision").default == "auto", command  # a device always comes with a precision


def test_out_and_output_are_one_option_everywhere():
    for command, parser in _commands().items():
        out = _option(parser, "--out")
        if out is not None:
            assert out.option_strings == ["--out", "--output"] and out.dest == "out", command
    parser = build_parser()
    args = parser.parse_args(["eval", "--model", "m", "--task", "knn", "--dataset", "d", "--output", "r1"])
    assert args.out == "r1"
    assert parser.parse_args(["eval", "--model", "m", "--task", "knn", "--dataset", "d", "--out", "r2"]).out == "r2"
    assert parser.parse_args(["eval", "--model", "m", "--task", "knn", "--dataset", "d"]).out == "eval_results"
    assert parser.parse_args(["index", "build", "e", "--output", "i"]).out == "i"


@pytest.mark.parametrize("argv", [
    ["embed", "src", "--model", "m", "--out", "o", "--device", "gpu"],
    ["eval", "--model", "m", "--task", "knn", "--dataset", "d", "--device", "cuda:x"],
    ["classify", "src", "--model", "m", "--labels", "a", "--out", "o", "--tome-r", "-1"],
    ["segment", "i.png", "--labels", "a", "--model", "m", "--out", "o", "--precision", "fp64"],
    ["train", "--set", "no_equals_sign", CLIP_TINY],
])
def test_a_bad_option_value_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err


def test_a_bad_input_ends_in_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["eval-merge", str(tmp_path / "missing.json"), "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("openeva eval-merge: error: ") and err.count("\n") == 1
    assert main(["search", str(tmp_path / "no_index"), "--text", "a cat"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("openeva search: error: ") and err.count("\n") == 1
    assert main(["train", CLIP_TINY, f"output_dir={tmp_path}", "--verbose"]) == 2
    assert "unknown option '--verbose'" in capsys.readouterr().err


def test_main_is_the_one_error_boundary(monkeypatch, capsys):
    def bad_input(*args, **kwargs):
        raise ValueError("first line\n  second line")

    monkeypatch.setattr(models_cmd, "model_rows", bad_input)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "openeva models: error: first line second line\n"  # one line

    def bug(*args, **kwargs):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(models_cmd, "model_rows", bug)
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        main(["models"])


def test_overrides_are_one_form_in_every_place(tmp_path, capsys):
    """`--set key=value` anywhere, and train/pretrain's positional key=value words, give the same config."""
    base = ["train", CLIP_TINY, f"output_dir={tmp_path}"]
    configs = []
    for argv in ([*base, "optim.lr=0.01", "data.batch_size=8", "--dry-run"],
                 [*base, "--set", "optim.lr=0.01", "--set", "data.batch_size=8", "--dry-run"],
                 ["train", "--set", "optim.lr=0.01", "--dry-run", CLIP_TINY, f"output_dir={tmp_path}",
                  "--set=data.batch_size=8"]):
        assert main(argv) == 0, argv
        configs.append(json.loads(capsys.readouterr().out))
    assert configs[0] == configs[1] == configs[2]
    assert configs[0]["optim"]["lr"] == 0.01 and configs[0]["data"]["batch_size"] == 8
    args = build_parser().parse_args(["eval", "--model", "m", "--task", "finetune", "--dataset", "d",
                                      "--set", "optim.lr=1e-3", "--finetune-set", "schedule.epochs=2"])
    assert args.set == ["optim.lr=1e-3", "schedule.epochs=2"]  # --finetune-set is the older name of --set


def test_dry_run_prints_the_resolved_precision_and_why(tmp_path, capsys):
    assert main(["train", CLIP_TINY, f"output_dir={tmp_path}", "precision=fp32", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["precision"] == "fp32"  # stdout stays the config alone
    assert re.fullmatch(r"precision fp32 -> fp32: .+\n", captured.err)
    assert main(["train", CLIP_TINY, f"output_dir={tmp_path}", "--dry-run"]) == 0
    assert re.match(r"precision auto -> (fp32|bf16): .+", capsys.readouterr().err)


def test_segment_takes_a_precision_and_prints_it(tmp_path, capsys):
    Image.new("RGB", (24, 20), (200, 30, 30)).save(tmp_path / "img.png")
    assert main(["segment", str(tmp_path / "img.png"), "--labels", "red,blue", "--model", "EVA02-test",
                 "--out", str(tmp_path / "mask.png"), "--precision", "fp32", "--device", "cpu"]) == 0
    assert "precision fp32 -> fp32: " in capsys.readouterr().err
    assert (tmp_path / "mask.png").is_file()
