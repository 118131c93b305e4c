"""The pieces both quickstart chains share: the stage runner (timing, progress lines, the output-folder guard,
a failure named after its stage with the partial report written), the config base (presets, scaling), the report
writer and its views, the data preparation through ``openeva.data`` and the ``--minutes`` plan of the built-in
chain; and the CLI refusing options that do not apply to the chosen chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openeva.cli import main
from openeva.quickstart import QuickstartConfig, QuickstartStageError, UserChainConfig, format_table
from openeva.quickstart.budget import StepCost, builtin_plan, fit_factor
from openeva.quickstart.report import ReportView, load_report, new_report
from openeva.quickstart.stages import ChainRun, Stage, open_out_dir
from openeva.quickstart.user_chain import prepare_user_data

VIEW = ReportView(intro="a test chain.", table=lambda r: (["stage"], [[str(s)] for s in r["stages"]]),
                  conclude=lambda r: "done" if "b" in r["stages"] else None)


def _boom() -> dict:
    raise RuntimeError("out of cheese")


def test_the_runner_times_files_and_names_a_failed_stage(tmp_path):
    lines: list[str] = []
    report = new_report("data", "t", {}, {})
    run = ChainRun(tmp_path, report, VIEW, lines.append, "[t]")
    with pytest.raises(QuickstartStageError, match="stage 'b' failed: RuntimeError: out of cheese") as err:
        run.run([Stage("a", "first", lambda: {"x": 1}), Stage("b", "second", _boom), Stage("c", "never", dict)])
    assert err.value.stage == "b" and isinstance(err.value.__cause__, RuntimeError)
    written = load_report(tmp_path)
    assert written["stages"]["a"]["x"] == 1 and written["stages"]["a"]["status"] == "ok"
    assert written["stages"]["a"]["total_s"] >= 0
    assert written["stages"]["b"] == {"status": "failed", "error": "RuntimeError: out of cheese"}
    assert "c" not in written["stages"] and written["wall_s"] >= 0
    assert lines[:2] == ["[t] first ...", lines[1]] and lines[1].startswith("[t] first: done in")
    assert (tmp_path / "report.html").is_file()


def test_a_list_report_gets_name_and_title(tmp_path):
    report = new_report("builtin", "t", {}, [])
    run = ChainRun(tmp_path, report, VIEW, lambda _: None)
    run.run([Stage("a", "first", lambda: {"x": 1})])
    assert report["stages"][0]["name"] == "a" and report["stages"][0]["title"] == "first"
    assert run.entry("a")["x"] == 1


def test_the_output_guard_removes_only_the_chains_outputs(tmp_path):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="overwrite"):
        open_out_dir(tmp_path, ("teacher", "report.json"), overwrite=False)
    assert (tmp_path / "teacher").is_dir()
    open_out_dir(tmp_path, ("teacher", "report.json"), overwrite=True)
    assert not (tmp_path / "teacher").exists() and (tmp_path / "mine.txt").read_text() == "keep"


def test_one_config_base_scales_each_chains_own_fields():
    qc, uc = QuickstartConfig.preset("fast"), UserChainConfig.preset("fast")
    assert qc.scaled(1) is qc
    half = qc.scaled(0.5)
    assert (half.teacher_steps, half.clip_steps, half.heldout_samples) == (6, 4, 60)
    assert half.train_samples >= half.batch_size and half.retrieval_samples == 30
    double = uc.scaled(2)
    assert (double.teacher_steps, double.finetune_steps, double.val_samples) == (8, 8, 64)
    assert double.max_equal_time_steps == uc.max_equal_time_steps  # a cap, not a step count
    steps_only = uc.steps_scaled(0.1)
    assert steps_only.finetune_steps == 1 and steps_only.train_samples == uc.train_samples
    for cls in (QuickstartConfig, UserChainConfig):
        with pytest.raises(ValueError, match="preset 'huge'"):
            cls.preset("huge")
        with pytest.raises(ValueError, match="precision"):
            cls(precision="fp8")
        with pytest.raises(ValueError, match="teacher_steps must be an int >= 1"):
            cls(teacher_steps=0)
    assert UserChainConfig(**uc.to_dict()) == uc  # a report's config rebuilds the run's


def test_format_table_picks_the_chains_view():
    report = new_report("data", "t", {}, {"teacher": {"status": "ok", "metrics": {"zeroshot_acc1": 0.5}}})
    table = format_table(report)
    assert "CLIP teacher zero-shot" in table and "50.0" in table
    builtin = new_report("builtin", "t", {}, [{"name": "teacher", "title": "CLIP teacher", "status": "ok",
                                               "metrics": {"zeroshot_pair_acc1": 0.25}}])
    assert "CLIP teacher" in format_table(builtin) and "25.0" in format_table(builtin)
    assert "No comparison" in format_table(builtin)  # the verdict is computed, here: nothing to compare


def _folders(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_data_preparation_skips_unreadable_images_by_the_data_layers_rule(tmp_path):
    data = _folders(tmp_path / "src", 10)
    (data / "cat" / "broken.png").write_bytes(b"not a png")
    prepared = prepare_user_data(data, None, tmp_path / "out", UserChainConfig.preset("fast"),
                                 ["a photo of a {c}."])
    assert prepared.skipped == 1 and prepared.num_train + prepared.num_val == 20  # counted, not fatal
    assert prepared.num_val in (3, 4)  # 20% held out, stratified: 2 of each class (one may be the broken file)
    rows = (tmp_path / "out" / "data" / "train_captions.csv").read_text().splitlines()[1:]
    assert len(rows) == prepared.num_train and all(r.endswith(("a photo of a cat.", "a photo of a dog.")) for r in rows)


def test_the_builtin_plan_fills_the_budget():
    cost = StepCost(step_s=0.2, stage_s=5.0)
    plan = builtin_plan(450, 250, 200, batch_size=64, eval_images=2000, cost=cost)
    factor = fit_factor(plan, seconds_left=600.0, minutes=10)
    assert plan.seconds(factor) == pytest.approx(600.0) and plan.fixed_s > 4 * 5.0
    assert fit_factor(builtin_plan(450, 250, 200, 64, 20000, cost), 600.0, 10) < factor  # more to evaluate


def test_the_builtin_chain_plans_minutes_too(tmp_path, capsys):
    assert main(["quickstart", "--fast", "--minutes", "0.01", "--out", str(tmp_path / "q"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "timing CLIP steps" in captured.out and "leaves no time to train" in captured.err
    assert main(["quickstart", "--fast", "--minutes", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "--minutes must be > 0" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_options_of_the_other_chain_are_refused(tmp_path, capsys):
    assert main(["quickstart", "--fast", "--val", str(tmp_path), "--out", str(tmp_path / "a")]) == 2
    assert "--val only apply with --data" in capsys.readouterr().err
    assert main(["quickstart", "--data", str(tmp_path), "--text-init", "random", "--fast",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--text-init random applies to the built-in chain" in capsys.readouterr().err
    assert main(["quickstart", "--data", str(tmp_path), "--text-init", "teacher", "--fast",
                 "--out", str(tmp_path / "c")]) == 2  # an explicit choice is refused too, never silently ignored
    assert "--text-init teacher applies to the built-in chain" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")
