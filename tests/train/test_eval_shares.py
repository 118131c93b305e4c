"""In-training evaluation on every rank: each rank of a 2-process run (gloo) scores a disjoint share of the
validation data, and the metrics the run logs equal a 1-process run's.

CLIP under DDP (retrieval gathers the features, zero-shot sums the counts), trained for 2 steps: 1 process with
batch 16 and 2 processes with batch 8 follow the same trajectory (tests/train/test_distributed_training.py), so
their validations agree within float tolerance. MIM under FSDP (each rank's share is a different number of
forwards through the gathered model; the loss summed over masked patches) and fine-tuning under DDP (accuracy of
the EMA and the raw weights), at lr 1e-12 so that only the evaluation is compared. The validation sets have odd sizes: the ranks' blocks differ by one.

The ranks run this file as a script (``python test_eval_shares.py RANK STORE OUT``, tests/helpers/gloo_ranks.py).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

WORLD_SIZE = 2
RUNS = {
    "clip": ("clip_tiny", "ddp", ["data.val_num_samples=21", "data.zeroshot_num_samples=9"]),
    "mim": ("mim_tiny", "fsdp", ["data.val_num_samples=13", "optim.lr=1e-12", "optim.weight_decay=0.0"]),
    "finetune": ("finetune_tiny", "ddp", ["data.val_num_samples=13", "optim.lr=1e-12", "optim.weight_decay=0.0"]),
}


class _Recorded(torch.utils.data.Dataset):
    """A dataset that notes every position read (the evaluators read in this process: num_workers 0)."""

    def __init__(self, dataset, seen: list):
        self.dataset, self.seen = dataset, seen

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        self.seen.append(int(i))
        return self.dataset[i]


def _train(task_name: str, tmp: Path, world, batch_size: int) -> dict:
    """Train as ``openeva train`` does, with the validation sets recorded; returns the val rows and positions."""
    from dataclasses import replace

    from openeva.configs import CONFIG_DIR
    from openeva.evaluators import Batching, Labelled
    from openeva.train.config import load_config
    from openeva.train.engine import Trainer, seed_all
    from openeva.train.runner import resolve_task

    config, strategy, extra = RUNS[task_name]
    cfg = load_config(CONFIG_DIR / f"{config}.py", [
        f"output_dir={tmp}", f"name=r{world.world_size}", "precision=fp32", f"data.batch_size={batch_size}",
        "data.train_num_samples=64", "schedule.total_steps=2", "schedule.epochs=None", "schedule.warmup_steps=0",
        "eval_every=1", "log_every=1", "save_every=100", "progress=false", "tensorboard=false", "plot=false",
        f"dist.strategy={strategy}", *extra])
    seed_all(cfg.seed)
    task, data = resolve_task(cfg.task).build(cfg, world)
    seen: dict[str, list] = {}
    if task_name == "clip":
        runs = []
        for evaluator, val, prefix in task.evaluator.runs:
            seen[prefix or "retrieval"] = []
            if isinstance(val, Labelled):
                val = replace(val, dataset=_Recorded(val.dataset, seen[prefix]))
            else:
                val = _Recorded(val, seen["retrieval"])
            # the validation loss averages over chunks of the loader's batch size, which follows data.batch_size
            runs.append((replace(evaluator, batching=Batching(batch_size=8)), val, prefix))
        task.evaluator.runs = runs
    elif task_name == "finetune":  # the EMA and the raw weights: each evaluation reads the set twice
        seen["accuracy"] = []
        loader = task.val_loader
        task.val_loader = torch.utils.data.DataLoader(_Recorded(loader.dataset, seen["accuracy"]), batch_size=4,
                                                      collate_fn=loader.collate_fn)
    else:
        seen["mim"] = []
        task.val_data = _Recorded(task.val_data, seen["mim"])
        task.val_batch_size = 4  # (the loss is summed over patches: any batch size gives the same value)
    Trainer(cfg, task, data, world, tmp / cfg.name).fit()
    val = []
    if world.is_main:
        rows = [json.loads(line) for line in (tmp / cfg.name / "metrics.jsonl").read_text().splitlines()]
        val = [r for r in rows if r.get("split") == "val"]
    return {"val": val, "seen": seen}


def _run_rank(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    from openeva.train.distributed import World

    out = Path(out_dir)
    task_name = (out / "task.txt").read_text()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    try:
        world = World(rank, WORLD_SIZE, 0, torch.device("cpu"), "gloo")
        result = _train(task_name, out, world, 8)
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _metrics(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "split")} for r in rows]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("task_name", sorted(RUNS))
def test_each_rank_scores_a_disjoint_share_and_the_metrics_are_one_process(tmp_path, task_name):
    from gloo_ranks import run_ranks  # here, not at the top: the ranks run this file as a script

    from openeva.train.distributed import World

    two = tmp_path / "two"
    two.mkdir()
    (two / "task.txt").write_text(task_name)
    run_ranks(__file__, WORLD_SIZE, two, timeout_s=300)
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    torch.set_num_threads(1)
    one = _train(task_name, tmp_path / "one", World(), 16)

    assert one["seen"] and set(one["seen"]) == set(ranks[0]["seen"])
    for name, positions in one["seen"].items():
        everything = set(positions)
        assert len(set(Counter(positions).values())) == 1  # one process reads every sample equally often
        shares = [set(r["seen"][name]) for r in ranks]
        assert shares[0] and shares[1] and not shares[0] & shares[1], name  # disjoint, neither empty
        assert shares[0] | shares[1] == everything, name  # together: the whole set
        assert sorted(len(s) for s in shares) == [len(everything) // 2, len(everything) - len(everything) // 2]

    a, b = _metrics(one["val"]), _metrics(ranks[0]["val"])
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert len(x) > 1
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-5), (x["step"], k)


if __name__ == "__main__":
    _run_rank(int(sys.argv[1]), sys.argv[2], sys.argv[3])
