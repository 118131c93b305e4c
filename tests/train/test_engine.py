"""The training engine end to end on tiny models: exact kill-and-resume, skipped corrupt samples, run directory
contents, checkpoint atomicity, precision modes, and a generic (non-CLIP) Task."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from openeva.train.checkpointing import CheckpointManager, sharded_keys
from openeva.train.config import OptimConfig, ScheduleConfig, TrainConfig, load_config
from openeva.train.data import ResumableLoader
from openeva.train.engine import Trainer
from openeva.runtime import Precision
from openeva.train.runner import train
from openeva.train.task import ParamGroupSpec, Task

from openeva.configs import CONFIG_DIR
QUIET = ["progress=false", "tensorboard=false", "plot=false", "data.val=none", "data.zeroshot=none", "log_every=1"]


def _tiny(tmp_path, *overrides):
    return load_config(CONFIG_DIR / "clip_tiny.py", [f"output_dir={tmp_path}", *QUIET, *overrides])


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


def test_kill_and_resume_ends_with_the_same_weights(tmp_path):
    """Stopped after step 2 and 4 (the kill), resumed from `latest` each time: bit-identical final weights
    and loss trajectory, with grad accumulation, patch dropout (training RNG), augmentation and an epoch
    boundary inside the run."""
    common = ["schedule.total_steps=6", "schedule.warmup_steps=2", "data.batch_size=8",
              "data.train_num_samples=40", "optim.accum_steps=2", "model.patch_dropout=0.25", "save_every=100"]
    full = train(_tiny(tmp_path, *common, "name=full"))
    assert full["step"] == 6 and full["epoch"] >= 1
    first = train(_tiny(tmp_path, *common, "name=cut", "max_steps_this_run=2"))
    assert first["step"] == 2 and not (tmp_path / "cut" / "final").exists()
    train(_tiny(tmp_path, *common, "name=cut", "resume=latest", "max_steps_this_run=2"))
    last = train(_tiny(tmp_path, *common, "name=cut", "resume=latest"))
    assert last["step"] == 6
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "cut")  # the log reads as one run too


def _write_caption_csv(root: Path, good: int, bad: dict) -> Path:
    rng = np.random.default_rng(0)
    rows = ["filepath,title"]
    for i in range(good):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,a picture number {i}")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    for i in range(bad["corrupt"]):
        rows.append(f"corrupt.png,a broken picture {i}")
    for i in range(bad["missing"]):
        rows.append(f"missing_{i}.png,a missing picture")
    for i in range(bad["empty"]):
        rows.append("0.png,")
    path = root / "pairs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    csv = _write_caption_csv(data, good=12, bad={"corrupt": 2, "missing": 1, "empty": 1})  # 16 rows
    out = train(_tiny(tmp_path / "runs", f"data.train={csv}", "data.batch_size=4", "schedule.total_steps=4",
                      "schedule.warmup_steps=0", "name=skip"))  # one epoch: every row read once
    assert out["skipped_samples"] == 4 and out["samples"] == 12
    last = json.loads((tmp_path / "runs" / "skip" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped_samples"] == 4 and last["samples_seen"] == 12


def test_data_without_one_usable_sample_stops_with_a_message(tmp_path):
    """CLIP training on images without captions skips every sample: the run stops, naming it, not loops."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(folder / f"{i}.png")  # no .txt captions
    with pytest.raises(ValueError, match="no usable sample"):
        train(_tiny(tmp_path / "runs", f"data.train={folder}", "data.batch_size=4", "schedule.total_steps=4",
                    "schedule.warmup_steps=0", "name=nocaptions"))


def test_cli_trains_a_tiny_clip_end_to_end(tmp_path):
    """`openeva train` writes the whole run directory, validates during training, and the final model retrieves
    its training pairs far better than chance."""
    from openeva.cli import main
    from openeva.eval.retrieval import retrieval_metrics, retrieval_ranks
    from openeva.factory import create_model, get_tokenizer
    from openeva.train.clip_task import build_clip
    from openeva.train.distributed import World

    argv = ["train", str(CONFIG_DIR / "clip_tiny.py"), f"output_dir={tmp_path}", "progress=false",
            "schedule.total_steps=40", "schedule.warmup_steps=5", "data.batch_size=32", "data.train_num_samples=256",
            "data.val_num_samples=64", "data.zeroshot_num_samples=50", "eval_every=20", "save_every=20",
            "keep_last=1", "log_every=5"]
    assert main(argv) == 0
    run = tmp_path / "clip_tiny"
    assert json.loads((run / "config.json").read_text())["schedule"]["total_steps"] == 40
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [20, 40]
    for key in ("loss", "image_retrieval_recall@1", "text_retrieval_recall@10", "zeroshot_acc1"):
        assert key in val[-1]
    train_rec = [r for r in records if r["split"] == "train"]
    assert {"loss", "lr", "logit_scale", "samples_per_s", "grad_norm"} <= set(train_rec[-1])
    assert list((run / "tb").glob("events.out.tfevents.*")) and (run / "plots" / "training.png").stat().st_size
    assert [p.name for p in CheckpointManager(run).list()] == ["step_0000040"]  # keep_last=1
    ckpt_cfg = json.loads((run / "checkpoints" / "step_0000040" / "config.json").read_text())
    assert ckpt_cfg["train_config"]["name"] == "clip_tiny" and ckpt_cfg["step"] == 40

    model = create_model(str(run / "final")).eval()
    cfg = load_config(run / "config.json")
    _, loader = build_clip(cfg, World())
    images, tokens = next(iter(loader.batches(0)))  # (32, 3, 32, 32), (32, 77): pairs it trained on
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(tokens)
    metrics = retrieval_metrics(retrieval_ranks(img, txt, torch.arange(len(img))))
    chance_at_5 = 5 / len(img)
    assert metrics["image_retrieval_recall@5"] > 2 * chance_at_5
    assert metrics["text_retrieval_recall@5"] > 2 * chance_at_5
    assert get_tokenizer("EVA02-test")(["x"]).shape == (1, 77)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.resolve("latest") is None  # resume=latest on a new run starts fresh
    for step in (1, 2, 3):
        tmp = mgr.prepare(step)
        (tmp / "train_state.pt").write_bytes(b"state")
        mgr.commit(step)
    assert [p.name for p in mgr.list()] == ["step_0000002", "step_0000003"]
    assert mgr.latest().name == "step_0000003"
    crashed = mgr.prepare(4)  # a save interrupted before commit: latest still names a complete step
    (crashed / "train_state.pt").write_bytes(b"half")
    assert mgr.latest().name == "step_0000003" and [p.name for p in mgr.list()][-1] == "step_0000003"
    # killed while re-saving step 3, between moving the old copy aside and moving the new one in
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step_0000003").rename(ckpts / ".old_step_0000003")
    assert mgr.latest().name == "step_0000003"  # the whole previous copy is put back
    assert (ckpts / "step_0000003" / "train_state.pt").read_bytes() == b"state"
    (ckpts / "latest").write_text("step_0000009\n")
    with pytest.raises(FileNotFoundError, match="step_0000009"):
        mgr.latest()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    out = train(_tiny(tmp_path, f"precision={precision}", "schedule.total_steps=2", "schedule.warmup_steps=0",
                      "data.batch_size=8", "data.train_num_samples=16", "name=p"))
    assert out["step"] == 2 and np.isfinite(out["loss"])
    state = torch.load(tmp_path / "p" / "checkpoints" / "step_0000002" / "train_state.pt", weights_only=True)
    assert bool(state["scaler"]) == (precision == "fp16")  # only fp16 needs (and saves) a grad scaler


def test_fp16_scaler_skips_overflowing_steps():
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    prec = Precision("fp16", torch.device("cpu"))
    prec.backward((p * float("inf")).sum())
    prec.unscale_(opt)
    assert prec.step(opt) is False and torch.equal(p.detach(), torch.ones(3))
    with pytest.raises(ValueError, match="precision"):
        Precision("fp8", torch.device("cpu"))


class _Regression(Task):
    """A non-CLIP Task: the engine knows nothing of CLIP."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.evaluated = []

    def forward(self, batch):
        x, y = batch
        loss = ((self.net(x).squeeze(-1) - y) ** 2).mean()
        return loss, {"mse": loss.detach()}

    def param_group_specs(self):
        return [ParamGroupSpec(self.net, "net")]

    def on_step_end(self, step):
        self.calls += 1

    def evaluate(self, step):
        self.evaluated.append(step)
        return {"mse": float(((self.net(torch.eye(4)).squeeze(-1) - torch.arange(4.0)) ** 2).mean())}


def test_engine_runs_any_task(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    data = torch.utils.data.TensorDataset(x, x @ torch.arange(4.0))
    cfg = TrainConfig(output_dir=str(tmp_path), name="reg", progress=False, tensorboard=False, log_every=1,
                      eval_every=10, schedule=ScheduleConfig(total_steps=30, warmup_steps=0),
                      optim=OptimConfig(lr=0.3, weight_decay=0.0))
    task = _Regression()
    out = Trainer(cfg, task, ResumableLoader(data, 16, seed=0), run_dir=tmp_path / "reg").fit()
    assert out["step"] == 30 and int(task.calls) == 30 and task.evaluated == [10, 20, 30]
    losses = _losses(tmp_path / "reg")
    assert losses[-1] < 0.1 * losses[0]
    # no registry model to export: the whole Task state lives in the sharded checkpoint, and no final/ is written
    keys = sharded_keys(tmp_path / "reg" / "checkpoints" / "step_0000030")
    assert keys == {"net.weight", "net.bias", "calls"} and not (tmp_path / "reg" / "final").exists()
    assert (tmp_path / "reg" / "plots" / "training.png").is_file()
