"""FSDP with ``dist.meta_init``: rank 1 builds its model on the meta device (no memory, no init), the engine shards
it, allocates the shards and receives them from rank 0 tensor by tensor; every parameter and buffer (sharded
blocks, the replicated frozen MIM teacher and fine-tune EMA copy, 0-dim logit scale) then equals a run where every
rank built the model on the CPU: for the CLIP, MIM, fine-tune and segmentation builders. 2 gloo processes; the
ranks run this file as a script (tests/helpers/gloo_ranks.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

WORLD_SIZE = 2
CONFIGS = {"clip": "clip_tiny", "mim": "mim_tiny", "finetune": "finetune_tiny", "segmentation": "segment_tiny"}
FROZEN = {"mim": "teacher.", "finetune": "ema."}  # the frozen replica outside the shards each task keeps


def _state(task_name: str, out: Path, world, meta_init: bool) -> tuple[dict, bool]:
    from torch.distributed.tensor import DTensor

    from openeva.configs import CONFIG_DIR
    from openeva.train.config import load_config
    from openeva.train.distributed import _named_tensors
    from openeva.train.engine import Trainer, seed_all
    from openeva.train.runner import resolve_task

    cfg = load_config(CONFIG_DIR / f"{CONFIGS[task_name]}.py", [
        f"output_dir={out}", f"name=meta{int(meta_init)}", "precision=fp32", "data.batch_size=4",
        "data.train_num_samples=16", "data.val=none", "schedule.total_steps=2", "schedule.warmup_steps=0",
        "progress=false", "tensorboard=false", "plot=false", "dist.strategy=fsdp", f"dist.meta_init={meta_init}"]
        + (["data.zeroshot=none"] if task_name == "clip" else [])
        + (["data.synthetic_num_samples=16", "schedule.epochs=None"] if task_name in ("finetune", "segmentation")
           else []))
    seed_all(cfg.seed)
    task, data = resolve_task(cfg.task).build(cfg, world)
    built_on_meta = all(p.is_meta for p in task.parameters())
    trainer = Trainer(cfg, task, data, world, out / cfg.name)
    state = {name: (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()
             for name, t in _named_tensors(trainer.model)}
    sharded = any(isinstance(p, DTensor) for p in trainer.model.parameters())
    assert sharded
    trainer.fit()  # and it trains: two steps to a final model
    return state, built_on_meta


def _run_rank(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    from openeva.train.distributed import World

    out = Path(out_dir)
    task_name = (out / "task.txt").read_text()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    try:
        world = World(rank, WORLD_SIZE, 0, torch.device("cpu"), "gloo")
        cpu, cpu_meta = _state(task_name, out, world, meta_init=False)
        meta, meta_meta = _state(task_name, out, world, meta_init=True)
        assert cpu.keys() == meta.keys()
        differ = [k for k in cpu if not torch.equal(cpu[k], meta[k])]
        (out / f"rank{rank}.json").write_text(json.dumps({
            "built_on_meta": [cpu_meta, meta_meta], "differ": differ, "tensors": len(cpu),
            "frozen": sorted({p for p in FROZEN.values() if any(k.startswith(p) for k in cpu)})}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("task_name", sorted(CONFIGS))
def test_meta_built_ranks_receive_the_cpu_built_weights(tmp_path, task_name):
    from gloo_ranks import run_ranks  # here, not at the top: the ranks run this file as a script

    (tmp_path / "task.txt").write_text(task_name)
    run_ranks(__file__, WORLD_SIZE, tmp_path, timeout_s=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert ranks[0]["built_on_meta"] == [False, False]  # rank 0 always builds (and reads weights)
    assert ranks[1]["built_on_meta"] == [False, True]  # rank 1: on the meta device only with meta_init
    for r in ranks:
        assert r["tensors"] > 10 and r["differ"] == []
    # the frozen replica outside the shards (MIM teacher, fine-tune EMA) is among the tensors compared
    assert ranks[0]["frozen"] == ([FROZEN[task_name]] if task_name in FROZEN else [])


if __name__ == "__main__":
    _run_rank(int(sys.argv[1]), sys.argv[2], sys.argv[3])
