"""A reduced ``openeva quickstart`` runs the whole chain end to end inside the suite: every stage trains and is
evaluated, the report files are written, the verdict agrees with the numbers, and a used folder is protected."""

from __future__ import annotations

import json

import pytest

from openeva.cli import main
from openeva.quickstart import QuickstartConfig, run_quickstart
from openeva.quickstart.builtin_view import compare


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "out"
    assert main(["quickstart", "--fast", "--out", str(out), "--no-progress"]) == 0
    return out


def test_reduced_quickstart_runs_every_stage_and_writes_the_report(report_dir, capsys):
    report = json.loads((report_dir / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert {"teacher", "mim", "evaclip", "scratch"} <= set(stages)
    for name in ("teacher", "mim", "evaclip", "scratch"):
        assert stages[name]["status"] == "ok", stages[name]
        assert (report_dir / name / "final" / "model.safetensors").is_file()  # each stage trained and exported
    clip_keys = {"zeroshot_pair_acc1", "zeroshot_shape_acc1", "zeroshot_color_acc1", "retrieval_i2t_r1",
                 "retrieval_t2i_r1", "linear_probe_shape_acc1"}
    for name in ("teacher", "evaclip", "scratch"):
        assert set(stages[name]["metrics"]) >= clip_keys
        assert all(0.0 <= v <= 1.0 for v in stages[name]["metrics"].values())
    assert "linear_probe_shape_acc1" in stages["mim"]["metrics"]
    # EVA-CLIP and the scratch baseline got the same compute
    assert stages["evaclip"]["steps"] == stages["scratch"]["steps"] and stages["evaclip"]["batch_size"] == stages["scratch"]["batch_size"]
    html = (report_dir / "report.html").read_text()
    assert "<table" in html and report["comparison"]["verdict"].split(":")[0] in html
    assert report["plots"] and all((report_dir / p).is_file() for p in report["plots"])


def test_verdict_is_computed_from_the_stage_metrics(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    again = compare(report)
    assert again["verdict"] == report["comparison"]["verdict"]
    mean = {k: sum(r[k] for r in again["metrics"]) / len(again["metrics"]) for k in ("evaclip", "scratch")}
    assert again["beat"] == (mean["evaclip"] > mean["scratch"])
    assert ("did not beat" in again["verdict"]) == (not again["beat"] and mean["evaclip"] != mean["scratch"])
    # flip the numbers: the verdict must follow them, not a fixed sentence
    flipped = json.loads(json.dumps(report))
    for s in flipped["stages"]:
        if s["name"] == "evaclip":
            s["metrics"] = {k: 0.0 for k in s["metrics"]}
        if s["name"] == "scratch":
            s["metrics"] = {k: 1.0 for k in s["metrics"]}
    worse = compare(flipped)
    assert worse["beat"] is False and "did not beat" in worse["verdict"] and "favour the" in worse["verdict"]


def test_a_used_output_folder_is_not_overwritten(report_dir):
    before = (report_dir / "report.json").read_text()
    with pytest.raises(ValueError, match="overwrite"):
        run_quickstart(report_dir, QuickstartConfig.preset("fast"), progress=False)
    assert (report_dir / "report.json").read_text() == before


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        QuickstartConfig.preset("fast").scaled(0)
    with pytest.raises(ValueError):
        QuickstartConfig.preset("huge")
