"""``model.compile=true``: the engine wraps the Task first (DDP / FSDP), then compiles each transformer block, and
no block breaks its graph (RoPE's layout check used to break every attention layer); TF32 for fp32 matmuls on
CUDA, decided in one place."""

from __future__ import annotations

import json

import pytest
import torch

from openeva.configs import CONFIG_DIR
from openeva.models.text import TextBlock
from openeva.models.vit import Block
from openeva.train.config import load_config
from openeva.train.distributed import World
from openeva.train.engine import Trainer, seed_all, use_tf32
from openeva.train.runner import resolve_task

QUIET = ["progress=false", "tensorboard=false", "plot=false", "data.val=none", "data.zeroshot=none", "log_every=1",
         "precision=fp32", "data.batch_size=4", "data.train_num_samples=16", "schedule.total_steps=2",
         "schedule.warmup_steps=0", "save_every=100"]


def _trainer(tmp_path, name: str, *overrides: str) -> Trainer:
    cfg = load_config(CONFIG_DIR / "clip_tiny.py", [f"output_dir={tmp_path}", f"name={name}", *QUIET, *overrides])
    seed_all(cfg.seed)
    task, data = resolve_task(cfg.task).build(cfg, World())
    return Trainer(cfg, task, data, run_dir=tmp_path / name)


def test_tf32_is_the_cuda_decision():
    assert use_tf32(torch.device("cuda")) and use_tf32(torch.device("cuda", 1))
    assert not use_tf32(torch.device("cpu")) and not use_tf32(torch.device("meta"))


def test_the_engine_compiles_every_block_without_a_graph_break(tmp_path):
    trainer = _trainer(tmp_path, "compiled", "model.compile=true")
    blocks = [m for m in trainer.model.modules() if isinstance(m, (Block, TextBlock))]
    assert blocks and trainer.compiled == blocks  # vision and text blocks, each compiled in place
    inputs = {}
    hooks = [b.register_forward_pre_hook(lambda m, a, kw: inputs.setdefault(m, (a, kw)), with_kwargs=True)
             for b in blocks]
    batch = next(iter(trainer.data.batches(0, 0)))
    with torch.compiler.set_stance("force_eager"), torch.no_grad():  # capture each block's real inputs, eagerly
        trainer.model(batch)
    for h in hooks:
        h.remove()
    assert set(inputs) == set(blocks)
    breaks = []
    for block in blocks:
        eager = block.forward._torchdynamo_orig_callable  # the forward the engine compiled
        args, kwargs = inputs[block]
        explained = torch._dynamo.explain(eager)(*args, **kwargs)
        breaks.append(explained.graph_break_count)
        assert explained.graph_count == 1, [r.reason for r in explained.break_reasons]
    assert breaks == [0] * len(blocks)
    names = {n for n, _ in trainer.model.named_parameters()}
    assert not any("_orig_mod" in n for n in names)  # compiled in place: checkpoints keep their keys


@pytest.mark.slow
def test_a_compiled_run_follows_the_eager_run(tmp_path):
    """Two steps with the blocks compiled by inductor give the eager run's losses (fp32, float tolerance)."""
    losses = {}
    for name, compile_ in (("eager", "false"), ("compiled", "true")):
        _trainer(tmp_path, name, f"model.compile={compile_}").fit()
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses["eager"]) == 2
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)
