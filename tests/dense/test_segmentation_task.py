"""The segmentation fine-tune task through the one engine: the tiny CPU recipe learns the synthetic scenes, resumes,
and reads image + mask folders; bad options fail before compute."""

from __future__ import annotations

import json

import pytest

from openeva.data.segmentation import write_segmentation_folder
from openeva.data.synthetic import ShapeScenes
from openeva.configs import load_config
from openeva.train import train
from openeva.train.runner import preflight


def test_tiny_recipe_learns_scenes(tmp_path):
    cfg = load_config("segment_tiny", [f"output_dir={tmp_path}", "data.synthetic_num_samples=384", "schedule.epochs=2",
                                       "eval_every=24", "save_every=24"])
    summary = train(cfg)
    assert summary is not None
    lines = [json.loads(x) for x in (tmp_path / "segment_tiny" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if any(k.endswith("miou") for k in x)]
    assert evals, lines[-3:]
    last = evals[-1]
    miou = next(v for k, v in last.items() if k.endswith("miou"))
    # all-background on these scenes: background IoU ~0.8 averaged with 0 for the colours present -> ~0.12
    assert miou > 0.3, last


def test_folder_data_and_preflight_errors(tmp_path):
    scenes = ShapeScenes(8, image_size=32)
    root = write_segmentation_folder(tmp_path / "seg", [scenes[i] for i in range(8)], scenes.classes)
    cfg = load_config("segment_tiny", [f"output_dir={tmp_path}/runs", f"data.train={root}", f"data.val={root}",
                                       "schedule.epochs=1", "data.batch_size=4", "schedule.warmup_steps=0"])
    train(cfg)
    with pytest.raises(ValueError, match="unknown task_options key .task .segmentation.. .bogus."):
        preflight(load_config("segment_tiny", [f"output_dir={tmp_path}/r2", "task_options.bogus=1"]))
    (root / "classnames.txt").unlink()
    with pytest.raises(ValueError, match="classnames"):
        preflight(load_config("segment_tiny", [f"output_dir={tmp_path}/r3", f"data.train={root}"]))
