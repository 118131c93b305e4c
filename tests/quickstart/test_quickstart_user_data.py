"""``openeva quickstart --data``: the chain on small generated class folders computes every number the report
compares (teacher zero-shot, frozen probes, three fine-tunes) and a verdict that agrees with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openeva.cli import main
from openeva.data.classnames import load_templates as load_templates_file
from openeva.quickstart.budget import MIN_FINETUNE_STEPS
from openeva.quickstart.noise import NOISE_SIGMAS, difference
from openeva.quickstart.user_chain import UserChainConfig, run_user_quickstart

COLORS = {"red": (210, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 210)}


def _folders(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(color) + rng.integers(-50, 51, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_data")
    train, val = _folders(root / "train", 12, 0), _folders(root / "val", 6, 1)
    templates = root / "templates.txt"
    templates.write_text("a photo of a {} square.\nsomething {c}.\n")
    out = root / "out"
    code = main(["quickstart", "--data", str(train), "--val", str(val), "--templates", str(templates), "--fast",
                 "--out", str(out), "--no-progress"])
    return code, out


def test_every_number_is_computed_and_compared(run):
    code, out = run
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    st = report["stages"]
    n = report["data_counts"]["val"]
    assert report["data_counts"] == {"train": 36, "val": 18, "skipped": 0, "classes": 3}
    values = [st["teacher"]["metrics"]["zeroshot_acc1"]]
    for who in ("student", "random"):
        values += [st["probes"][who][k] for k in ("linear_probe_acc1", "knn10_acc1", "knn20_acc1")]
    values += [st[k]["acc1"] for k in ("finetune_student", "finetune_random_equal_steps",
                                       "finetune_random_equal_time")]
    assert all(0.0 <= v <= 1.0 for v in values)
    # (a) and (b) ran the same steps; (c) the steps that fit in the chain's time (capped by the preset)
    assert st["finetune_student"]["steps"] == st["finetune_random_equal_steps"]["steps"] == 4
    assert st["finetune_random_equal_time"]["steps"] == report["equal_time"]["steps"] >= 1
    assert st["finetune_student"]["recipe"] == "finetune_pretrained_tiny"
    assert st["finetune_random_equal_steps"]["recipe"] == "finetune_scratch_tiny"
    assert st["finetune_student"]["probe_head"]  # LP-FT for the student, fresh heads for random weights
    assert not st["finetune_random_equal_steps"]["probe_head"] and not st["finetune_random_equal_time"]["probe_head"]
    v = report["verdict"]
    a_ok, b_ok = st["finetune_student"]["val_correct"], st["finetune_random_equal_steps"]["val_correct"]
    probe_ok = st["probes"]["student"]["linear_probe_val_correct"]
    for ok, acc in ((a_ok, st["finetune_student"]["acc1"]), (probe_ok, st["probes"]["student"]["linear_probe_acc1"])):
        assert len(ok) == n and set(ok) <= {"0", "1"} and ok.count("1") / n == pytest.approx(acc)
    expected = difference(st["finetune_student"]["acc1"], st["finetune_random_equal_steps"]["acc1"], n, a_ok, b_ok)
    assert v["equal_steps"] == pytest.approx(expected) and v["equal_steps"]["paired"]
    assert v["equal_steps"]["beyond_noise"] == (abs(expected["diff"]) > NOISE_SIGMAS * expected["se"])
    assert "At equal steps" in v["sentence"] and "at equal CPU time" in v["sentence"]
    assert report["templates"] == ["a photo of a {} square.", "something {}."]
    captions = (out / "data" / "train_captions.csv").read_text()
    assert "a photo of a red square." in captions or "something red." in captions
    html = (out / "report.html").read_text()
    assert v["sentence"].split(",")[0] in html and (out / "plots" / "accuracies.png").is_file()


def test_verdict_noise_rule():
    assert difference(0.9, 0.5, 1000)["beyond_noise"] and not difference(0.52, 0.5, 100)["beyond_noise"]
    # the same 1000 images: b gets 890 right, a those and 10 more. Unpaired, +1 point is inside two binomial
    # standard errors (+-2.7); paired, only the 10 images they disagree on carry noise (+-0.6)
    a_ok, b_ok = "1" * 900 + "0" * 100, "1" * 890 + "0" * 110
    unpaired, paired = difference(0.9, 0.89, 1000), difference(0.9, 0.89, 1000, a_ok, b_ok)
    assert not unpaired["paired"] and not unpaired["beyond_noise"] and unpaired["se"] == pytest.approx(0.0137, abs=1e-4)
    assert paired["paired"] and paired["beyond_noise"] and paired["se"] == pytest.approx(0.00315, abs=1e-5)
    assert paired["se_unpaired"] == pytest.approx(unpaired["se"])
    # disagreeing on many images in both directions is noise, paired or not
    mixed = difference(0.5, 0.49, 1000, "10" * 500, "01" * 495 + "00" * 5)
    assert mixed["paired"] and not mixed["beyond_noise"]
    # per-image results of different lengths (a skipped image) cannot be paired
    assert not difference(0.9, 0.89, 1000, a_ok, b_ok[:-1])["paired"]


def test_bad_input_gets_a_clear_message(tmp_path, capsys):
    assert main(["quickstart", "--data", str(tmp_path / "nope"), "--fast", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "t.txt"
    bad.write_text("no placeholder here\n")
    with pytest.raises(ValueError, match="class name"):
        load_templates_file(bad)
    with pytest.raises(ValueError, match="int >= 1"):
        UserChainConfig(finetune_steps=0)


def test_a_used_output_folder_is_not_overwritten(run):
    _, out = run
    with pytest.raises(ValueError, match="overwrite"):
        run_user_quickstart(out / "data" / "train", out, UserChainConfig.preset("fast"), progress=False)


def test_minutes_plans_the_steps_from_two_timed_runs(tmp_path, capsys):
    """``--minutes``: the steps come from the fitted time model, are the ones that run, and the report keeps the
    plan next to the time the run took (no timing is asserted: the CPU differs from machine to machine)."""
    train, val = _folders(tmp_path / "train", 12, 0), _folders(tmp_path / "val", 6, 1)
    out = tmp_path / "out"
    assert main(["quickstart", "--data", str(train), "--val", str(val), "--fast", "--minutes", "0.75",
                 "--out", str(out), "--no-progress"]) == 0
    log = capsys.readouterr().out  # every long stage says what it is doing, the probes stage included
    assert "min budget" in log and "probes (student): fitting a linear probe" in log and "probes: frozen random" in log
    report = json.loads((out / "report.json").read_text())
    b, cfg, fast = report["budget"], report["config"], UserChainConfig.preset("fast")
    assert b["minutes"] == 0.75 and b["step_s"] > 0 and b["stage_s"] >= 0 and len(b["calibration_s"]) == 2
    assert b["actual_s"] == report["wall_s"] > 0
    for key in ("teacher_steps", "mim_steps"):
        assert cfg[key] == max(1, round(getattr(fast, key) * b["step_factor"]))
    # the fine-tune is never planned shorter than MIN_FINETUNE_STEPS (or its configured length, if shorter)
    floor = min(fast.finetune_steps, MIN_FINETUNE_STEPS)
    assert cfg["finetune_steps"] == max(floor, round(fast.finetune_steps * b["step_factor"]))
    assert cfg["train_samples"] == fast.train_samples  # --minutes scales steps, not the prepared data
    assert report["stages"]["teacher"]["steps"] == cfg["teacher_steps"]
    assert report["stages"]["finetune_student"]["steps"] == cfg["finetune_steps"]


def test_a_budget_too_small_for_this_cpu_is_a_clear_error(tmp_path, capsys):
    train = _folders(tmp_path / "train", 12, 0)
    assert main(["quickstart", "--data", str(train), "--fast", "--minutes", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--minutes must be > 0" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["quickstart", "--data", str(train), "--fast", "--minutes", "0.01", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 2
    assert "leaves no time to train" in capsys.readouterr().err
